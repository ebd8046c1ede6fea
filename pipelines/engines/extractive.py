"""The extractive engine: no language model. The answer is the sentences of the sources that best
answer the question, from the best source, each cited (``pipelines/query/evidence.py``, the
selection of the pipeline's extractive fallback over the first source only, lexical scoring
only: the Generation service has no embedder).

A tier for when a small model is not good enough and a large one is not always needed: on SQuAD
(`python -m evals.answer_quality --set RAGROUTE_SMALL_ENGINE=extractive`, report split) it contains the gold
answer in 87% of its answers at token F1 0.162, where the packaged SmolLM2-135M manages 20% and
0.066, in milliseconds instead of seconds. It quotes rather than answers: the reader gets what
the best source says, in its words. SQuAD flatters it (its questions share words with the
answering sentence), and when retrieval's best source is the wrong document it quotes that
(docs/results.md, "Answer quality"). A cascade judges its quotes by ``coverage`` (the share of the
question's terms the quote contains; RAGROUTE_CASCADE_SIGNAL=coverage): from this tier to the
0.5B model it kept 96.5% of the large tier's F1 on SQuAD with 66% of the questions escalated.

    RAGROUTE_SMALL_ENGINE=extractive make serve

Engines normally turn chat messages into text; this one reads the question and the sources
themselves (``reads_sources``), which ``Generator.stream`` hands it instead of the prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from common.records import ScoredChunk
from pipelines.config import TierConfig
from pipelines.engines.base import Chunk, Final, Sampling
from pipelines.query import evidence

MODEL = "extractive"
SOURCES = 1  # the reranker's best source: its sentences only (three sources let BM25 pick a
# look-alike sentence elsewhere: "What does the pass statement do?" quoted the class topic)
MAX_CHARS = 400


class ExtractiveEngine:
    name = "extractive"
    reads_sources = True
    concurrency = None  # a few milliseconds of CPU per answer: no queue of its own

    def __init__(self, tier: TierConfig) -> None:
        self.model = f"{MODEL} (best source sentences, BM25)"

    def count_tokens(self, text: str) -> int:
        return len(text.split())  # words: only prompt sizes and usage are counted with it

    async def answer(self, question: str, sources: Sequence[ScoredChunk], sampling: Sampling) -> AsyncIterator[Chunk]:
        text = evidence.extract(question, list(sources)[:SOURCES], max_chars=MAX_CHARS)
        yield Chunk(text=text)
        prompt = self.count_tokens(question) + sum(self.count_tokens(s.chunk.text) for s in sources[:SOURCES])
        yield Chunk(final=Final("stop", prompt, self.count_tokens(text)))

    async def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[Chunk]:
        raise NotImplementedError("the extractive engine answers from sources (Generator.stream), not from messages")
        yield Chunk()  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        pass
