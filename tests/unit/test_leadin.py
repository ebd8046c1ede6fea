"""Lead-ins that only point at the sources are dropped (their citations kept); phrases that say
something are not; streamed token by token gives the same text as the whole answer."""

from __future__ import annotations

import pytest

from pipelines.query import leadin
from pipelines.query.leadin import LeadIn

TITLES = ["Victoria (Australia)", "Steam engine"]


@pytest.mark.parametrize(("answer", "expected"), [
    ("According to the sources, Melbourne is the sporting capital. [2]", "Melbourne is the sporting capital. [2]"),
    ("According to [1], Victoria claimed it in 1788.", "Victoria claimed it in 1788. [1]"),
    ("According to sources [1], it is the most densely populated state.",
     "It is the most densely populated state. [1]"),
    ("According to Victoria (Australia), Linda Dessau is the Governor. [1]", "Linda Dessau is the Governor. [1]"),
    ("Based on the information provided, the lead melts. [1]", "The lead melts. [1]"),
    ("In the provided sources, steam turbines came late. [2]", "Steam turbines came late. [2]"),
    ("The answer to the question is: Melbourne [1]", "Melbourne [1]"),
    ("According to [1] and [3], it melts. [3]", "It melts. [3] [1]"),
])
def test_a_lead_in_that_points_at_the_sources_is_dropped_and_its_citations_kept(answer, expected):
    assert leadin.strip(answer, TITLES) == expected


@pytest.mark.parametrize("answer", [
    "According to legend, the city was founded in 1835.",  # says who claims it: content
    "According to Watt, the engine was efficient. [1]",  # a person, not a source's title
    "In 1788, Victoria was claimed. [1]",
    "In Python, the with statement wraps a block. [1]",
    "Based on his patents, Watt built engines.",
    "Melbourne is the sporting capital. [2]",
    "According to the sources",  # nothing after it: kept rather than emptied
])
def test_anything_else_is_kept_as_it_is(answer):
    assert leadin.strip(answer, TITLES) == answer


def tokens(text: str) -> list[str]:
    """Roughly how a model streams: a word (with its leading space) at a time, punctuation apart."""
    out, word = [], ""
    for ch in text:
        if ch in " ,[]." and word:
            out.append(word)
            word = ""
        word += ch
    return out + ([word] if word else [])


@pytest.mark.parametrize("answer", [
    "According to the sources, Melbourne is the sporting capital. [2]",
    "According to [1], Victoria claimed it in 1788.",
    "According to Victoria (Australia), Linda Dessau is the Governor. [1]",
    "The answer is: 1606 [1]",
    "According to legend, the city was founded in 1835.",
    "In 1788, Victoria was claimed. [1]",
    "Melbourne [1]",
    "In",
    "According to the sources",
    "Based on " + "a very long preamble " * 10 + "and then, it melts.",
])
def test_streaming_gives_the_whole_answers_result(answer):
    f = LeadIn(TITLES)
    streamed = "".join(f.feed(t) for t in tokens(answer)) + f.close()
    assert streamed.strip() == leadin.strip(answer, TITLES).strip()


def test_text_that_cannot_be_a_lead_in_is_released_at_once():
    f = LeadIn(TITLES)
    assert f.feed("Melbourne") == "Melbourne"  # not the start of any lead-in: no hold
    f = LeadIn(TITLES)
    assert f.feed("Acc") == "" and f.feed("ording") == ""  # might be "According to ...": held
    assert f.feed(" to legend") == ""
    assert f.feed(", it was") == "According to legend, it was"  # decided: released whole
