"""A follow-up in a conversation, asked as the standalone question it means.

"What does the nonlocal statement do?" then "And what about global?" means "What does the global
statement do?", not a question about nonlocal. Retrieval, routing and the cache must see that
question, so the OpenAI dialect (pipelines/api/openai_compat.py) rewrites a follow-up before it is
asked, by rules (microseconds, no model; measured by ``python -m evals.followups`` on the QA set's
conversations, evals/data/conversations.jsonl):

1. **Substitution** — the follow-up names a new subject and little else ("And what about
   global?", "What about for loops?", "And keyword arguments?", "Same for tuples?"): the
   previous question's subject is replaced by it. The subject of a question is the phrase its
   words point at: a term followed by a head noun ("the *with* statement", "*default* arguments"),
   a quoted or code term, or else its rarest words (a term in no stop list).
2. **Reference** — the follow-up refers back ("Does it close the file?", "What are its
   arguments?", "How are those evaluated?"): the pronoun becomes the previous question's subject
   phrase ("Does the with statement close the file?").
3. Otherwise (too short to stand alone and neither of the above: "Why?", "Example?") the
   previous question travels with it, as before: ``Regarding "<previous>": <follow-up>``.

The rules read the conversation's words only; a Python keyword that is also an English
function word ("with", "for", "if") counts as a subject where it stands before a head noun.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Nouns that name the kind of thing the subject is: "the with STATEMENT", "keyword ARGUMENTS".
HEADS = frozenset("""statement statements expression expressions operator operators operation operations method
methods function functions loop loops keyword keywords clause clauses object objects type types attribute attributes
block blocks literal literals argument arguments parameter parameters value values variable variables comprehension
comprehensions pattern patterns display displays""".split())
# Words that are never the subject (question words, auxiliaries, articles, pronouns, prepositions
# that are not Python keywords, generic verbs of a question).
STOP = frozenset("""what which who whom whose when where why how does do did done doing is are was were be been being
am can could should would will shall may might must the a an of to on at by about into onto from than then that
this these those there here it its it's itself they them their theirs i me my we us our you your he him his she her
use used using mean means meaning happen happens explain describe tell define defined get gets work works make makes
have has had python pythons difference between also same other another some any example examples kind kinds way
ways please thing things one ones there's what's written write""".split())
REFERRING = {"it": False, "its": True, "itself": False, "this": False, "that": False, "these": False,
             "those": False, "they": False, "them": False, "their": True}  # True: possessive
DETERMINERS = frozenset({"this", "that", "these", "those"})
OPENERS = re.compile(r"^(?:and|but|also|so|then|or|ok(?:ay)?|now)?[\s,]*(?:what|how)\s+about\s+|"
                     r"^(?:and|but|also|so|then|or)\s+(?=\S)|^(?:same|the same)\s+(?=for|with)|^what\s+of\s+",
                     re.IGNORECASE)
PREPOSITIONS = frozenset("to for in with from on at of by into inside without about under over".split())
QUESTION_WORDS = frozenset("what how why when where which who whom whose does do did is are was were can could "
                           "should would will".split())
_TOKEN = re.compile(r"`[^`]+`|\"[^\"]+\"|'[^' ]+'|[A-Za-z_][\w.]*(?:'s)?|\S")
_WORD = re.compile(r"[A-Za-z_][\w.]*")
MAX_NEW_WORDS = 4  # a substitution names a subject, not a new question
MAX_NEW_CLAUSE_WORDS = 8  # ... or a phrase in place of one of the previous question's ("in a nested loop")


@dataclass(frozen=True)
class Subject:
    start: int  # token span of the subject term(s) in the question
    end: int
    head: str | None  # the head noun after it, if any ("statement")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _is_word(token: str) -> bool:
    return bool(_WORD.fullmatch(token.removesuffix("'s")))


def _content(token: str) -> bool:
    low = token.lower()
    return (token.startswith(("`", '"', "'")) or _is_word(token)) and low not in STOP and low not in HEADS


def subject(tokens: list[str]) -> Subject | None:
    """The subject of a question: the term(s) before a head noun, a quoted/code term, or its
    content words (the longest run of them)."""
    for i, tok in enumerate(tokens):
        if tok.startswith(("`", '"')) and len(tok) > 2:
            head = tokens[i + 1].lower() if i + 1 < len(tokens) and tokens[i + 1].lower() in HEADS else None
            return Subject(i, i + 1, head)
    for i, tok in enumerate(tokens):
        if tok.lower() in HEADS and i > 0 and _is_word(tokens[i - 1]) and tokens[i - 1].lower() not in HEADS \
                and (tokens[i - 1].lower() not in STOP):
            start = i - 1
            while start > 0 and _content(tokens[start - 1]) and tokens[start - 1].lower() not in KEYWORD_WORDS:
                start -= 1  # "default keyword arguments", but not "function with default arguments"
            return Subject(start, i, tok.lower())
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        if _content(tokens[i]):
            j = i
            while j < len(tokens) and _content(tokens[j]):
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    if not runs:
        return None
    start, end = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
    head = tokens[end].lower() if end < len(tokens) and tokens[end].lower() in HEADS else None
    return Subject(start, end, head)


ARTICLES_BEFORE = frozenset({"a", "an", "the"})
# Python keywords that are English function words: a subject only right before a head noun.
KEYWORD_WORDS = frozenset("with for in if else and or not as is from while".split())


def _join(tokens: list[str]) -> str:
    text = " ".join(tokens)
    text = re.sub(r"\s+([?.!,;:)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    return re.sub(r"\s+'s\b", "'s", text)


def _phrase(tokens: list[str], subj: Subject) -> str:
    """The subject as a noun phrase, with its article and an "of" phrase after it: "the with
    statement", "default arguments", "a generator function", "the else clause of a try statement"."""
    end = subj.end + (1 if subj.head else 0)
    if subj.head and end + 1 < len(tokens) and tokens[end].lower() == "of":
        stop = end + 1
        while stop < len(tokens) and _is_word(tokens[stop]) and (
                tokens[stop].lower() in ARTICLES_BEFORE or _content(tokens[stop]) or tokens[stop].lower() in HEADS):
            stop += 1
        if stop > end + 1:
            end = stop
    words = tokens[subj.start: end]
    article = tokens[subj.start - 1].lower() if subj.start > 0 else ""
    if article in ARTICLES_BEFORE:
        words = [article, *words]
    elif subj.head and not subj.head.endswith("s"):
        words = ["the", *words]
    return _join(words)


def _singular(word: str) -> str:
    low = word.lower()
    return low[:-1] if low.endswith("s") and not low.endswith("ss") else low


def _aligned(previous: list[str], new_tokens: list[str]) -> str | None:
    """Parallel structure: the new phrase shares a word with the previous question ("an empty
    dict" after "... of an empty list?", "keyword arguments" after "... default arguments?"):
    it replaces the span of the previous question that lines up with it on that word."""
    for off in range(len(new_tokens) - 1, -1, -1):  # the last shared word first (a head noun)
        word = new_tokens[off]
        if not _content(word) and word.lower() not in HEADS and not (off == 0 and _is_word(word)):
            continue  # a function word lines up only where it opens the phrase ("from a list")
        for pos in range(len(previous) - 1, -1, -1):
            if _is_word(previous[pos]) and _singular(previous[pos]) == _singular(word):
                start, end = pos - off, pos - off + len(new_tokens)
                if start >= 0 and end <= len(previous) and all(_is_word(t) for t in previous[start:end]):
                    return _join(previous[:start] + new_tokens + previous[end:])
    return None


def _substitute(previous: list[str], new: str) -> str | None:
    """The previous question about the new subject: the new phrase replaces the subject phrase
    it shares a word with ("await expressions" for "the yield expression", "yield from" for
    "the yield statement"'s "yield"), else the span it lines up with elsewhere ("an empty dict"
    for "an empty list"), else the subject ("global" for "the nonlocal statement"'s "nonlocal")."""
    new_tokens = _tokens(new)
    while new_tokens and new_tokens[0].lower() in ARTICLES_BEFORE and len(new_tokens) > 1:
        new_tokens = new_tokens[1:]
    subj = subject(previous)
    new_head = new_tokens[-1].lower() if len(new_tokens) > 1 and new_tokens[-1].lower() in HEADS else None
    if subj is not None:
        phrase_end = subj.end + (1 if subj.head else 0)
        in_subject = {_singular(t) for t in previous[subj.start:phrase_end] if _is_word(t)}
        if any(_is_word(t) and _singular(t) in in_subject for t in new_tokens):
            if new_head and subj.head:
                replacement = [*new_tokens[:-1], _agree(subj.head, new_head)]
                return _join(previous[: subj.start] + replacement + previous[phrase_end:])
            return _join(previous[: subj.start] + new_tokens + previous[subj.end:])
    if aligned := _aligned(previous, new_tokens):
        return aligned
    if subj is None:
        return None
    if new_head:  # "for loops": the term replaces the subject, the head noun replaces the head
        new_tokens = new_tokens[:-1]
    out = previous[: subj.start] + new_tokens
    rest = previous[subj.end:]
    if subj.head and new_head and rest and rest[0].lower() == subj.head:
        rest = [_agree(subj.head, new_head), *rest[1:]]
    return _join(out + rest)


def _agree(old_head: str, new_head: str) -> str:
    """The new head noun in the previous question's number: "What does the for statement do?"
    + "loops" -> "the for loop"."""
    if old_head.endswith("s") == new_head.endswith("s"):
        return new_head
    return new_head + "s" if old_head.endswith("s") else new_head.removesuffix("s")


def _possessive(phrase: str) -> str:
    return phrase + ("'" if phrase.endswith("s") else "'s")


def _refer(previous: list[str], follow_up: list[str]) -> str | None:
    subj = subject(previous)
    if subj is None:
        return None
    phrase = _phrase(previous, subj)
    for i, tok in enumerate(follow_up):
        low = tok.lower()
        if low not in REFERRING:
            continue
        nxt = follow_up[i + 1].lower() if i + 1 < len(follow_up) else ""
        take = 1
        if low in DETERMINERS and _is_word(nxt) and nxt not in STOP:
            if subj.head and _singular(nxt) == _singular(subj.head):
                take = 2  # "this statement" after "the with statement": the phrase itself
            else:
                replaced = _possessive(phrase)  # "those names": the with statement's names
                return _join(follow_up[:i] + [_capital(replaced, i)] + follow_up[i + 1:])
        replaced = _possessive(phrase) if REFERRING[low] else phrase
        return _join(follow_up[:i] + [_capital(replaced, i)] + follow_up[i + take:])
    return None


def _capital(text: str, position: int) -> str:
    return text if position else text[0].upper() + text[1:]


def is_follow_up(question: str) -> bool:
    """The question needs its conversation: it continues one ("And for loops?", "What about
    sets?"), refers back ("Does it close the file?", "those"), is shorter than three words, or
    names nothing ("Why is that?"). "What is __mro__?" stands on its own.

    >>> [is_follow_up(q) for q in ("And for loops?", "Is it fast?", "Why?", "What is __mro__?")]
    [True, True, True, False]
    """
    text = question.strip()
    words = [w.lower() for w in _WORD.findall(text)]
    return bool(OPENERS.match(text)) or any(w in REFERRING for w in words) or len(words) < 3 \
        or not any(_content(t) for t in _tokens(text))


def rewrite(previous: str, follow_up: str) -> str | None:
    """The standalone question ``follow_up`` means after ``previous`` (itself standalone), or
    None when no rule applies.

    >>> rewrite("What does the nonlocal statement do?", "And what about global?")
    'What does the global statement do?'
    >>> rewrite("What does the with statement do?", "Does it close the file?")
    'Does the with statement close the file?'
    >>> rewrite("How do I define a function with default arguments?", "And keyword arguments?")
    'How do I define a function with keyword arguments?'
    >>> rewrite("What does the while statement do?", "What about for loops?")
    'What does the for loop do?'
    >>> rewrite("What does the with statement do?", "Why?") is None
    True
    """
    prev, text = _tokens(previous.strip()), follow_up.strip()
    opener = OPENERS.match(text)
    if opener:
        new = text[opener.end():].strip().rstrip("?.! ").strip()
        words = [w.lower() for w in _WORD.findall(new)]
        if len(words) > 1 and words[0] in QUESTION_WORDS:  # "And what does close() do?": a question of its own
            rest = new[0].upper() + new[1:] + text[len(text.rstrip("?.! ")):]
            return _refer(prev, _tokens(rest)) or rest
        if words and not any(w in REFERRING for w in words):
            if words[0] in PREPOSITIONS and len(words) <= MAX_NEW_CLAUSE_WORDS:
                if replaced := _replace_phrase(prev, _tokens(new)):
                    return replaced
                if not (len(words) == 2 and words[1] in HEADS):  # "for loops" names a subject
                    new, words = new.split(None, 1)[1] if len(words) > 1 else new, words[1:]
            if words and len(words) <= MAX_NEW_WORDS:
                return _substitute(prev, new)
    return _refer(prev, _tokens(text))


def _replace_phrase(previous: list[str], new_tokens: list[str]) -> str | None:
    """A phrase opened by a preposition replaces the previous question's phrase opened by the same
    one, to the end of the question ("... do to a name?" + "to a list item" -> "... do to a list
    item?"; "... for changing case?" + "for removing whitespace")."""
    prep = new_tokens[0].lower()
    positions = [i for i, t in enumerate(previous) if t.lower() == prep]
    if not positions:
        return None
    start = positions[-1]
    end = start + 1
    while end < len(previous) and previous[end] not in {"?", ".", "!"}:
        end += 1
    return _join(previous[:start] + new_tokens + previous[end:])
