"""Prompt building, in one place: numbered sources so answers can cite them, fitted to the
tier's context limit by trimming sources (never the question)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipelines.records import ScoredChunk

PROMPT_VERSION = "1"
SYSTEM = (
    "You answer questions using only the numbered sources provided. "
    "Cite the sources you use like [1]. If the sources do not contain the answer, say you don't know. "
    "Answer in at most three sentences."
)
MIN_SOURCE_CHARS = 200


def _render(question: str, sources: Sequence[tuple[str, str]]) -> str:
    blocks = "\n\n".join(f"[{i}] {title}\n{text}" for i, (title, text) in enumerate(sources, 1))
    return f"Sources:\n{blocks}\n\nQuestion: {question}"


def build_messages(
    question: str,
    sources: Sequence[ScoredChunk],
    *,
    prompt_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[dict[str, str]]:
    """Chat messages whose token count stays within ``prompt_tokens``.

    Sources are shortened from the last one backwards (halving their text) and dropped
    when shorter than MIN_SOURCE_CHARS; the question is always kept whole.
    """
    parts = [(s.chunk.title, s.chunk.text) for s in sources]
    overhead = 16  # chat-template tokens around the two messages

    def fits(items: Sequence[tuple[str, str]]) -> bool:
        return count_tokens(SYSTEM) + count_tokens(_render(question, items)) + overhead <= prompt_tokens

    while parts and not fits(parts):
        title, text = parts[-1]
        if len(text) // 2 >= MIN_SOURCE_CHARS:
            parts[-1] = (title, text[: len(text) // 2].rsplit(" ", 1)[0] + " …")
        else:
            parts.pop()
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _render(question, parts)}]
