"""Measured generation throughput of one tier: prefill and decode tokens per second.

A time budget becomes a token limit (``Generator.token_limit``), and the cascade decides whether
the next tier still fits (``cascade.judge``), from these rates. Static guesses set on one machine
overrun the budget on a slower one and cut answers short on a faster one, so the rates are
measured: the configured ``RAGROUTE_<TIER>_PREFILL_TOK_S`` / ``_DECODE_TOK_S`` are only the prior,
replaced by the engine's warm-up measurement at start-up (llama.cpp) and then updated from every
answer (an exponential moving average, so a machine that gets busier is followed within a few
requests). A rate measured below the warm-up's relaxes back towards it while no answer comes
(half-life RELAX_S): rates measured in a burst of load would otherwise outlive it, and a tier
whose estimate said "too slow for any budget" would never be tried again to learn otherwise.

Prefill is measured as prompt tokens / time to the first token, so it is the *effective* rate:
llama.cpp reuses the KV cache of the prompt prefix it shares with the previous request (the
system prompt), which the rate then includes.

    >>> t = Throughput(prefill_tok_s=100.0, decode_tok_s=20.0)
    >>> t.seconds(prompt_tokens=200, answer_tokens=40)
    4.0
    >>> t.calibrate(150.0, 20.0)  # the engine's warm-up
    >>> t.observe(prompt_tokens=200, ttft_s=1.0, answer_tokens=41, latency_s=3.0)
    >>> round(t.prefill_tok_s), round(t.decode_tok_s)
    (165, 20)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# An observation shorter than this says more about timer noise and scheduling than about the rate.
MIN_PREFILL_S = 0.02
MIN_DECODE_TOKENS = 4
MIN_DECODE_S = 0.02
ALPHA = 0.3  # weight of a new observation in the moving average
RELAX_S = 30.0  # half-life of a measured slowdown below the warm-up rate, while no answer comes


@dataclass(frozen=True)
class Rates:
    prefill_tok_s: float
    decode_tok_s: float
    source: str  # "configured" (the prior), "warm-up" or "measured" (updated from answers)
    samples: int  # answers that updated the rates since start-up

    def as_dict(self) -> dict[str, float | int | str]:
        return {"prefill_tok_s": round(self.prefill_tok_s, 1), "decode_tok_s": round(self.decode_tok_s, 1),
                "source": self.source, "samples": self.samples}


class Throughput:
    """Thread-safe moving estimate of one tier's prefill and decode rates."""

    def __init__(self, prefill_tok_s: float, decode_tok_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if prefill_tok_s <= 0 or decode_tok_s <= 0:
            raise ValueError(f"rates must be > 0 (prefill {prefill_tok_s}, decode {decode_tok_s})")
        self._lock = threading.Lock()
        self._prefill = prefill_tok_s
        self._decode = decode_tok_s
        self._source = "configured"
        self._samples = 0
        self._clock = clock
        self._warm: tuple[float, float] | None = None  # the warm-up's rates: what a slowdown relaxes to
        self._observed_at = clock()

    def _relaxed(self, measured: float, warm: float | None) -> float:
        if warm is None or measured >= warm:
            return measured
        return warm - (warm - measured) * 0.5 ** ((self._clock() - self._observed_at) / RELAX_S)

    @property
    def prefill_tok_s(self) -> float:
        return self._relaxed(self._prefill, self._warm and self._warm[0])

    @property
    def decode_tok_s(self) -> float:
        return self._relaxed(self._decode, self._warm and self._warm[1])

    def rates(self) -> Rates:
        with self._lock:
            return Rates(self.prefill_tok_s, self.decode_tok_s, self._source, self._samples)

    def seconds(self, prompt_tokens: int, answer_tokens: int) -> float:
        """How long a prompt and an answer of these sizes take at the current rates."""
        return prompt_tokens / self.prefill_tok_s + answer_tokens / self.decode_tok_s

    def calibrate(self, prefill_tok_s: float | None, decode_tok_s: float | None) -> None:
        """Replace the prior with a warm-up measurement (either rate may be missing)."""
        with self._lock:
            if prefill_tok_s and prefill_tok_s > 0:
                self._prefill = prefill_tok_s
            if decode_tok_s and decode_tok_s > 0:
                self._decode = decode_tok_s
            self._warm = (self._prefill, self._decode)
            self._observed_at = self._clock()
            self._source = "warm-up"

    def observe(self, *, prompt_tokens: int, ttft_s: float | None, answer_tokens: int, latency_s: float) -> None:
        """Update from one answer: ``ttft_s`` covers the prefill, the rest of ``latency_s`` the
        decoding of all tokens but the first. Too-short observations are ignored."""
        prefill = decode = None
        if ttft_s is not None and ttft_s >= MIN_PREFILL_S and prompt_tokens > 0:
            prefill = prompt_tokens / ttft_s
        if ttft_s is not None and answer_tokens - 1 >= MIN_DECODE_TOKENS and latency_s - ttft_s >= MIN_DECODE_S:
            decode = (answer_tokens - 1) / (latency_s - ttft_s)
        if prefill is None and decode is None:
            return
        with self._lock:
            # From where the rates stand now (relaxed since the last answer, if they were slow).
            self._prefill, self._decode = self.prefill_tok_s, self.decode_tok_s
            self._observed_at = self._clock()
            # The first measurement replaces a configured prior outright: it may be far off.
            alpha = 1.0 if self._source == "configured" else ALPHA
            if prefill is not None:
                self._prefill += alpha * (prefill - self._prefill)
            if decode is not None:
                self._decode += alpha * (decode - self._decode)
            self._source = "measured"
            self._samples += 1
