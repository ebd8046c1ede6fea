"""The modes a request's ``tier`` selects, by name; any other name is a configured tier.

Adding a mode: a module here with a :class:`~pipelines.query.modes.base.Mode` subclass, and one
line in :data:`MODES`.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import BadRequest
from pipelines.query.modes.auto import Auto
from pipelines.query.modes.base import Mode
from pipelines.query.modes.cascade import Cascade

MODES: dict[str, Mode] = {
    "auto": Auto(),
    "cascade": Cascade(),
}
FIXED = Mode()


def mode_for(tier: str, tiers: Sequence[str]) -> Mode:
    """The mode of a request's ``tier``; BadRequest naming the field when it is neither a mode
    nor a configured tier, or when the configured tiers cannot serve the mode."""
    mode = MODES.get(tier)
    if mode is None:
        if tiers and tier not in tiers:
            raise BadRequest("tier", f"{tier!r} is not a configured tier; valid: {', '.join([*MODES, *tiers])}")
        mode = FIXED
    mode.validate(tiers)
    return mode


def available(tiers: Sequence[str]) -> list[str]:
    """The names of the modes the configured tiers can serve, in registry order (what the API
    documents and the OpenAI model list offers)."""
    out = []
    for name, mode in MODES.items():
        try:
            mode.validate(tiers)
        except BadRequest:
            continue
        out.append(name)
    return out
