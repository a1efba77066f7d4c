"""Graceful degradation: past a fraction of the monthly caps, a cheaper model and/or a lower output cap.

``DEGRADE=80%:gpt-4.1-nano:300, 95%::100`` reads: once the service has used 80 %
of its monthly token cap or of its monthly spend cap (the more used of the two),
chat requests get ``gpt-4.1-nano`` with at most 300 output tokens; past 95 %,
at most 100 (the model of the step before stays). At 100 % the caps refuse, as
without degradation. ``TokenBudget`` reads how much of the month is used (at
most once a second per process) and the chat service applies the step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_STEP = re.compile(r"^\s*(?P<fraction>[0-9.]+)\s*(?P<percent>%?)\s*:(?P<model>[^:]*):(?P<cap>[^:]*)$")
_EXAMPLE = "steps such as '80%:gpt-4.1-nano:300, 95%::100' (FRACTION:MODEL:MAX_TOKENS; model or cap may be empty)"


@dataclass(frozen=True, slots=True)
class Degradation:
    """One step: from ``threshold`` (a fraction of the monthly caps) on, this model and/or this output cap."""

    threshold: float
    model: str | None = None
    max_tokens: int | None = None

    def __str__(self) -> str:
        return f"{self.percent}%:{self.model or ''}:{self.max_tokens or ''}"

    @property
    def percent(self) -> str:
        """The threshold in percent, as the ``x-llmguard-degraded`` header says it (``80``, ``82.5``)."""
        return f"{round(self.threshold * 100, 6):g}"

    def as_dict(self) -> dict[str, float | str | int | None]:
        """What replies carry as ``"degraded"``."""
        return {"threshold": self.threshold, "model": self.model, "max_tokens": self.max_tokens}


def parse_degrade(text: str) -> tuple[Degradation, ...]:
    """``DEGRADE``: comma-separated ``FRACTION:MODEL:MAX_TOKENS`` steps (``80%`` or ``0.8``)."""
    steps = []
    for part in (part for part in text.split(",") if part.strip()):
        match = _STEP.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a step: expected {_EXAMPLE}")
        try:
            fraction = float(match["fraction"])
        except ValueError:
            raise ValueError(f"{part.strip()!r}: {match['fraction']!r} is not a number") from None
        if match["percent"]:
            fraction /= 100
        elif fraction >= 1:
            raise ValueError(f"{part.strip()!r}: write the fraction as a percent ('80%') or below 1 ('0.8')")
        cap_text = match["cap"].strip()
        try:
            cap = int(cap_text) if cap_text else None
        except ValueError:
            raise ValueError(f"{part.strip()!r}: the output cap {cap_text!r} is not a whole number") from None
        steps.append(Degradation(fraction, match["model"].strip() or None, cap))
    return check_degrade(tuple(steps))


def check_degrade(steps: Sequence[Degradation], *, option: str = "degrade") -> tuple[Degradation, ...]:
    """The steps, lowest threshold first; ``ValueError`` naming ``option`` for a step that cannot work."""
    if isinstance(steps, (str, bytes)) or not all(isinstance(step, Degradation) for step in steps):
        raise ValueError(f"{option}: expected Degradation steps")
    seen: set[float] = set()
    for step in steps:
        if not 0 < step.threshold < 1:
            raise ValueError(
                f"{option}: the step at {step.percent}% must be above 0% and below 100% (at 100% the caps refuse)"
            )
        if step.threshold in seen:
            raise ValueError(f"{option}: two steps at {step.percent}%")
        seen.add(step.threshold)
        if step.model is None and step.max_tokens is None:
            raise ValueError(f"{option}: the step at {step.percent}% changes nothing: name a model, a cap or both")
        if step.max_tokens is not None and step.max_tokens < 1:
            raise ValueError(f"{option}: the step at {step.percent}% has an output cap below 1")
    return tuple(sorted(steps, key=lambda step: step.threshold))


def step_for(steps: Sequence[Degradation], used: float) -> Degradation | None:
    """The step in force when ``used`` of the caps is spent: the highest reached, what it leaves empty carried up.

    A step without a model keeps the model of the step below it, and one
    without a cap its cap (``95%::100`` after ``80%:gpt-4.1-nano:300`` serves
    gpt-4.1-nano with 100 tokens).
    """
    reached: Degradation | None = None
    model: str | None = None
    cap: int | None = None
    for step in steps:
        if used < step.threshold:
            break
        model, cap = step.model or model, step.max_tokens or cap
        reached = step
    if reached is None:
        return None
    return Degradation(reached.threshold, model, cap)
