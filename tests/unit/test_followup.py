"""Follow-ups asked as the standalone question they mean (issue 38), as logic: each rule of
pipelines/query/followup.py on the cases it exists for, the fallback where none applies, and the
conversations file the eval replays (evals/followups.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.query.followup import is_follow_up, rewrite

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("previous, follow_up, standalone", [
    # a new subject in place of the old one (the example: answered about nonlocal before)
    ("What does the nonlocal statement do?", "And what about global?", "What does the global statement do?"),
    ("What does the while statement do?", "What about for loops?", "What does the for loop do?"),
    ("What does the yield expression do?", "And await expressions?", "What does the await expression do?"),
    ("What does the yield statement do?", "What about yield from?", "What does the yield from statement do?"),
    ("How do I define a function with default arguments?", "And keyword arguments?",
     "How do I define a function with keyword arguments?"),
    ("What is the truth value of an empty list?", "What about an empty dict?", "What is the truth value of an empty dict?"),
    ("What methods do dictionaries have?", "And lists?", "What methods do lists have?"),
    # a phrase in place of the one opened by the same preposition
    ("What does the del statement do to a name?", "And to a list item?", "What does the del statement do to a list item?"),
    ("What are the string methods for changing case?", "And for removing whitespace?",
     "What are the string methods for removing whitespace?"),
    # a reference to the previous subject, possessives included
    ("What does the with statement do?", "Does it close the file?", "Does the with statement close the file?"),
    ("What does the raise statement do?", "What does its from clause do?", "What does the raise statement's from clause do?"),
    ("How are integer literals written?", "Is there a limit on their length?", "Is there a limit on integer literals' length?"),
    ("What does the global statement do?", "Can those names be used before the declaration?",
     "Can the global statement's names be used before the declaration?"),
    ("What is a generator function?", "How do I send values into it?", "How do I send values into a generator function?"),
    ("What does the else clause of a try statement do?", "Is it run before finally?",
     "Is the else clause of a try statement run before finally?"),
])
def test_a_follow_up_becomes_the_standalone_question_it_means(previous, follow_up, standalone):
    assert is_follow_up(follow_up)
    assert rewrite(previous, follow_up) == standalone


@pytest.mark.parametrize("follow_up", ["Why?", "Example?"])
def test_no_rule_means_no_rewrite(follow_up):
    assert rewrite("What does the with statement do?", follow_up) is None  # the caller keeps the context


@pytest.mark.parametrize("question", ["What is __mro__?", "How do I raise an exception?",
                                      "What is the difference between a list and a tuple?"])
def test_a_question_that_names_its_subject_stands_alone(question):
    assert not is_follow_up(question)


def test_the_conversations_file_is_well_formed_and_names_real_help_topics():
    from pydoc_data.topics import topics

    rows = [json.loads(line) for line in (ROOT / "evals" / "data" / "conversations.jsonl").read_text().splitlines()]
    assert len(rows) >= 30 and len({r["id"] for r in rows}) == len(rows)
    assert {r["split"] for r in rows} == {"dev", "test"}
    for r in rows:
        assert 2 <= len(r["turns"]) <= 3, r["id"]
        assert r["turns"][0]["user"] == r["turns"][0]["standalone"], r["id"]  # the first turn stands alone
        for turn in r["turns"]:
            assert turn["topic"] in topics and turn["answer"] and turn["facts"], (r["id"], turn["topic"])

