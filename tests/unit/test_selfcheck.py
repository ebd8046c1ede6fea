"""The answer self-check (the cascade's ``selfcheck`` signal): arithmetic that does not compute,
cut-off answers, unsure wording, and what it leaves alone."""

from __future__ import annotations

import pytest

from pipelines.query.selfcheck import check


@pytest.mark.parametrize("answer, problem", [
    ("She sells 9 * 2 = 19 eggs.", "arithmetic: 9 * 2 = 19 (it is 18)"),
    ("So one monitor costs $<<(2400-700)/2=800>>800.", "arithmetic: (2400-700)/2 = 800 (it is 850)"),
    ("(12 / 20) x 100 = 55%.", "arithmetic: ( 12 / 20 ) x 100 = 55% (it is 60)"),
    ("It costs $1,300 * 10/100 = $140.", "arithmetic: 1300 * 10 / 100 = 140 (it is 130)"),
    ("Halving gives 7 / 2 = 3 each.", "arithmetic: 7 / 2 = 3 (it is 3.5)"),  # a half is not a rounding
    ("17 / (1/4) = 17 * 5 = 85", "arithmetic: 17 / ( 1 / 4 ) = 17 * 5 (it is 68)"),  # a chain: both sides
    ("2^3 = 9", "arithmetic: 2 ^ 3 = 9 (it is 8)"),
])
def test_arithmetic_that_does_not_compute_is_a_problem(answer, problem):
    found = check(answer)
    assert found.problems == (problem,) and found.confidence == 0.5


@pytest.mark.parametrize("answer", [
    "She has 16 - 3 = 13 eggs left, and 13 - 4 = 9 after baking.",
    "In a week he runs 3 x 60 = <<3*60=180>>180 meters.",
    "Each gets 10 / 3 = 3.33 liters.",  # rounded to the digits shown
    "12/20 = 60% of the class.",  # a percentage of a ratio
    "It is 1,440 * 30 = 43,200 pounds.",  # thousands separators
    "17 / (1/4) = 17 \\* 4 = 68 beads",  # escaped * (markdown), a chain of equal sides
])
def test_arithmetic_that_computes_is_no_problem(answer):
    found = check(answer)
    assert found.problems == () and found.equations >= 1 and found.confidence == 1.0


@pytest.mark.parametrize("answer", [
    "48 car washes * $15/car wash = $700",  # words between the numbers: not judged
    "Solve 2x + 3 = 7 for x.",  # algebra, not arithmetic
    "x = 5 and y = 3",
    "In 2019 - 2020 = the season",  # no number after =
    "9**9**9 = 1",  # not one of the forms read (and never evaluated)
    "Set timeout = 30 in the config.",
])
def test_statements_it_cannot_read_are_not_judged(answer):
    assert check(answer).problems == ()


def test_cut_off_and_unfinished_answers_are_problems():
    assert check("The total is 15 + 25 = 40 cups", "length").problems == ("cut off at the token limit",)
    assert check("The total is 15 + 25 = <<15+2").problems == ("unfinished: the text stops mid-way",)
    assert check("We can set up the following equation:").problems == ("unfinished: the text stops mid-way",)
    assert check("The total is 40 cups.", "stop").problems == ()


def test_unsure_wording_is_a_problem_once():
    found = check("However, since you can't have half a bolt, round up to 3. However it is approximately 3.")
    assert found.problems == ("unsure wording ('However')",)
    assert check("The with statement wraps a block [1].").problems == ()


def test_confidence_falls_with_each_problem():
    assert check("16 - 3 = 13.").confidence == 1.0
    assert check("16 - 3 = 12.").confidence == 0.5
    assert check("16 - 3 = 12 and 2 * 2 = 5; however").confidence == pytest.approx(1 / 4)
    assert check("16 - 3 = 12 and 2 * 2 = 5; however", "length").confidence == pytest.approx(1 / 5)


def test_a_pathological_answer_is_read_in_bounded_time():
    found = check("1 + 1 = 3 " * 5000)
    assert found.equations == 200 and len(found.problems) == 200
