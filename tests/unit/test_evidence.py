"""Evidence selection: sentence splitting, scoring, the prompt's context and the extractive answer."""

from __future__ import annotations

import numpy as np

from pipelines.query import cite, evidence
from pipelines.query.prompt import INSTRUCTION, SYSTEM, build_messages
from tests.fakes import chunk

WITH = chunk(0, 'The "with" statement\n********************\n\nThe "with" statement is used to wrap the execution '
                "of a block with methods defined by a context manager. This allows common try/finally usage "
                "patterns to be encapsulated.\n\nChanged in version 3.10: Support for using grouping parentheses.",
             title="with")
OTHER = chunk(1, "The for statement is used to iterate over the elements of a sequence. It has an else clause.",
              title="for")


def words(text: str) -> int:
    return len(text.split())


def test_split_drops_underlined_headings_and_keeps_sentences():
    assert evidence.split_sentences(WITH.chunk.text) == [
        'The "with" statement is used to wrap the execution of a block with methods defined by a context manager.',
        "This allows common try/finally usage patterns to be encapsulated.",
        "Changed in version 3.10: Support for using grouping parentheses.",
    ]


def test_overlapping_chunks_contribute_a_sentence_once_where_it_ranks_best():
    overlap = chunk(2, "It has an else clause. The break statement ends the loop.", title="for")
    sents = evidence.sentences([OTHER, overlap])
    texts = [s.text for s in sents]
    assert texts.count("It has an else clause.") == 1
    assert next(s for s in sents if s.text == "It has an else clause.").source == 0


def test_the_best_sentence_answers_the_question():
    srcs = [chunk(0, "Lists are mutable. A tuple is an immutable sequence. Tuples use parentheses.")]
    assert [s.text for s in evidence.best("What is a tuple?", srcs, 1)] == ["A tuple is an immutable sequence."]


def test_sentence_vectors_can_outweigh_word_overlap():
    srcs = [chunk(0, "Tuples are written with parentheses. An immutable sequence type holds fixed items.")]
    q = np.array([1.0, 0.0], dtype=np.float32)
    vectors = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)  # the second sentence means the question
    # Each sentence shares one word with the question; the shorter one wins on words alone.
    assert evidence.best("What is a tuple type?", srcs, 1)[0].position == 0
    assert evidence.best("What is a tuple type?", srcs, 1, query_vector=q, vectors=vectors)[0].position == 1


def test_select_keeps_the_budget_reading_order_and_the_next_sentence():
    picked = evidence.select("What does the with statement do?", [WITH, OTHER], budget_tokens=40, count_tokens=words)
    assert sum(words(s.text) + 1 for ss in picked.values() for s in ss) <= 40
    with_sents = [s.position for s in picked[0]]
    assert with_sents == sorted(with_sents) and with_sents[:2] == [0, 1]  # the best, then the one after


def test_render_marks_skipped_text():
    s = [evidence.Sentence(0, 0, "A."), evidence.Sentence(0, 1, "B."), evidence.Sentence(0, 3, "D.")]
    assert evidence.render(s) == "A. B. … D."


def test_extract_cites_the_source_it_quotes():
    answer = evidence.extract("What is the for statement used for?", [WITH, OTHER])
    assert answer.startswith("The for statement is used to iterate") and answer.endswith("[2]")
    assert "Changed in version" not in answer  # a chunk's head is not the fallback any more


def test_extract_without_sources_says_so():
    assert "no relevant source" in evidence.extract("q", [])


def test_prompt_is_lean_numbered_and_keeps_the_question_whole():
    question = "What does the with statement do? " + "Really, " * 30
    long = chunk(3, " ".join(["Unrelated filler sentence number %d." % i for i in range(200)]), title="filler")
    messages = build_messages(question, [WITH, OTHER, long], prompt_tokens=2000, count_tokens=words,
                              source_tokens=60)
    assert messages[0] == {"role": "system", "content": SYSTEM}
    user = messages[1]["content"]
    assert question in user and user.endswith(INSTRUCTION)
    assert "[1] with\n" in user and "context manager" in user
    body = user.split("Sources:\n", 1)[1].split("\n\nQuestion:", 1)[0]
    assert words(body) <= 60 + 3 * 4  # the source budget, plus the numbered titles


def test_a_source_with_nothing_selected_keeps_the_others_numbers():
    messages = build_messages("What does the for statement iterate over?", [WITH, OTHER], prompt_tokens=2000,
                              count_tokens=words, source_tokens=14)
    user = messages[1]["content"]
    assert "[2] for\n" in user and "[1] with" not in user


def test_an_answer_without_citations_gets_the_sources_that_support_it():
    answer = "The with statement wraps the execution of a block with methods of a context manager."
    assert cite.attribute(answer, [OTHER, WITH]) == [2]
    assert cite.missing(answer, [OTHER, WITH]) == " [2]"
    assert cite.precision(answer + cite.missing(answer, [OTHER, WITH]), [OTHER, WITH]) == 1.0


def test_citations_already_there_are_kept_and_unsupported_ones_count_against_precision():
    cited = "The for statement iterates over the elements of a sequence [2]."
    assert cite.missing(cited, [WITH, OTHER]) == ""
    assert cite.precision("The for statement iterates over the elements of a sequence [1].", [WITH, OTHER]) == 0.0
    assert cite.precision("No citation here.", [WITH, OTHER]) is None


def test_an_answer_nothing_supports_gets_no_citation():
    assert cite.missing("Bananas are yellow fruit grown in warm countries.", [WITH, OTHER]) == ""


def test_an_extract_leaves_out_a_sentence_that_announces_what_follows():
    source = chunk(0, "The with statement wraps a block with a context manager. "
                      "The execution of the with statement proceeds as follows:")
    assert evidence.extract("What does the with statement do?", [source]) == \
        "The with statement wraps a block with a context manager. [1]"
    only = chunk(0, "The with statement runs as follows:")
    assert evidence.extract("What does the with statement do?", [only]) == "The with statement runs as follows: [1]"


def test_an_extract_leaves_out_grammar_rules_and_interactive_sessions():
    source = chunk(0, '   pass_stmt ::= "pass"\n\n"pass" is a null operation. When it is executed, nothing happens.')
    out = evidence.extract("What does the pass statement do?", [source])
    assert "::=" not in out and "null operation" in out
    source = chunk(0, ">>> try: ... raise TypeError ... except: ... print(sys.exception())\n\n"
                      "An exception is caught by an except clause of a try statement.")
    assert evidence.extract("How do I catch an exception?", [source]) == \
        "An exception is caught by an except clause of a try statement. [1]"


def test_an_extract_passes_over_a_better_scoring_announcement_for_the_best_prose_sentence():
    source = chunk(0, "The pass statement is useful as a placeholder when a statement is required, for example:\n\n"
                      "It is a null operation.")
    assert evidence.extract("What does the pass statement do?", [source]) == "It is a null operation. [1]"


def test_an_extract_passes_over_code_lines():
    source = chunk(0, '"pass" is a null operation.\n\n   def f(arg): pass    # a function that does nothing (yet)\n')
    assert evidence.extract("What does pass do in a function f?", [source]) == '"pass" is a null operation. [1]'


def test_coverage_is_the_share_of_the_question_terms_in_the_answers_first_statement():
    """Terms are stemmed, question and function words (with, for, in ... too) are dropped, and only
    the text before the first citation counts: a quote's later sentences do not lift it."""
    c = evidence.coverage("How many people lived in Melbourne in 1956?", "About 1.5 million people lived there. [1] "
                                                                           "Melbourne grew. [2]")
    assert c.terms == ("peopl", "live", "melbourn", "1956") and c.missing == ("melbourn", "1956")
    assert c.value == 0.5
    assert evidence.coverage("What does the with statement do?", "It has one. ").terms == ("statement",)
    assert evidence.coverage("What is it?", "Anything.").value == 1.0  # a question of function words only
    # no citation: the first sentence is the statement
    assert evidence.coverage("Who founded Rome?", "Romulus founded Rome. Remus did not.").value == 1.0
    assert evidence.first_statement("Romulus founded Rome [1] and Remus [2].") == "Romulus founded Rome"
