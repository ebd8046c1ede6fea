"""Prompt building, in one place: numbered sources so answers can cite them, lean enough for a
CPU tier's prefill, never trimming the question.

Context assembly (``pipelines/query/evidence.py``): each source contributes only its sentences
that best match the question (and the sentence after its best one), within a source-token
budget: the tier's ``source_tokens``, capped by what its context window leaves and by what the
caller's time allows. Numbering is that of the sources given, so ``[2]`` is always the second
source of the response even when the first contributed nothing.

The instructions ask for one or two sentences with citations; ``STOP`` ends an answer that
starts a new section instead (small models tend to repeat the sources or invent a next
question), and ``leadin.py`` drops an opening such as "According to the sources," that the
models write anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from common.records import ScoredChunk
from pipelines.query import evidence

PROMPT_VERSION = "3"  # 3: answers lose their lead-in ("According to [1], "), pipelines/query/leadin.py
SYSTEM = (
    "You answer questions using only the numbered sources provided. "
    "Answer in one or two short sentences that state the answer directly (do not begin with "
    "'According to the sources' or 'Based on'), and cite the sources you use like [1]. "
    "If the sources do not contain the answer, say you don't know."
)
INSTRUCTION = "Answer directly in one or two short sentences, citing the sources like [1]."
STOP = ("\n\n", "\nQuestion:", "\nSources:")  # one paragraph: past it small models repeat themselves
OVERHEAD_TOKENS = 16  # chat-template tokens around the two messages


def _render(question: str, blocks: Sequence[str]) -> str:
    return "Sources:\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\n{INSTRUCTION}"


def build_messages(
    question: str,
    sources: Sequence[ScoredChunk],
    *,
    prompt_tokens: int,
    count_tokens: Callable[[str], int],
    source_tokens: int | None = None,
) -> list[dict[str, str]]:
    """Chat messages whose token count stays within ``prompt_tokens``, with at most
    ``source_tokens`` of source text (None: as much as fits).

    The sources' best sentences are chosen until the budget is spent; a source with none is
    left out (its number is not reused); the question is always kept whole.
    """
    fixed = count_tokens(SYSTEM) + count_tokens(_render(question, [])) + OVERHEAD_TOKENS
    titles = sum(count_tokens(f"[{i}] {s.chunk.title}") + 2 for i, s in enumerate(sources, 1))
    budget = prompt_tokens - fixed - titles
    if source_tokens is not None:
        budget = min(budget, source_tokens)
    picked = evidence.select(question, sources, max(0, budget), count_tokens)
    blocks = [f"[{i + 1}] {sources[i].chunk.title}\n{evidence.render(picked[i])}" for i in sorted(picked)]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _render(question, blocks)}]
