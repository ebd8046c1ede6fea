"""Safety stage: a lightweight check of a generated answer before it is returned.

Checks (each problem is reported by name):
- grounding: the share of the answer's content words that occur in the sources it was
  given; below ``min_grounding`` the answer is probably not supported by them;
- citations: [n] markers that point to no source;
- prompt leak: the answer repeats the system prompt;
- blocked patterns: a configurable regular expression.

The action on a problem is ``flag`` (the answer is returned with the problems listed) or
``replace`` (an extract of the best source is returned instead, marked degraded). An answer
with a problem is never cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.records import ScoredChunk
from pipelines.config.safety import SafetyConfig
from pipelines.query.cite import CITATION, content_words
from pipelines.query.prompt import SYSTEM

LEAK_CHARS = 40  # a verbatim run this long from the system prompt counts as a leak


@dataclass(frozen=True)
class SafetyReport:
    grounding: float
    problems: tuple[str, ...] = field(default_factory=tuple)


def grounding(answer: str, sources: Sequence[ScoredChunk]) -> float:
    """The share of the answer's content words (citation markers aside) that occur in its
    sources' titles and texts; 1.0 for an answer without content words. Also the cascade's
    ``grounded`` confidence signal (pipelines/query/modes/cascade.py)."""
    words = content_words(answer)
    source_words = content_words(" ".join(f"{s.chunk.title} {s.chunk.text}" for s in sources))
    return len(words & source_words) / len(words) if words else 1.0


def check(answer: str, sources: Sequence[ScoredChunk], cfg: SafetyConfig) -> SafetyReport:
    grounded = grounding(answer, sources)
    problems = []
    if grounded < cfg.min_grounding:
        problems.append(f"weakly grounded: {grounded:.0%} of its content words occur in the sources "
                        f"(minimum {cfg.min_grounding:.0%})")
    bad = sorted({int(n) for n in CITATION.findall(answer) if not 1 <= int(n) <= len(sources)})
    if bad:
        problems.append(f"cites sources that do not exist: {bad}")
    norm = " ".join(answer.split()).lower()
    system = SYSTEM.lower()
    if any(system[i:i + LEAK_CHARS] in norm for i in range(0, len(system) - LEAK_CHARS + 1, 10)):
        problems.append("repeats the system prompt")
    if cfg.blocked is not None and (m := cfg.blocked.search(answer)):
        problems.append(f"matches a blocked pattern ({m.group(0)!r})")
    return SafetyReport(round(grounded, 4), tuple(problems))
