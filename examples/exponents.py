"""The examples' ``--eta`` values: a number, a rule of the hidden size ``D``, or a learned
exponent, as :class:`harmonic_tf.HarmonicLMHead` arguments."""

from __future__ import annotations

import math

RULES = {
    "sqrt": lambda d: math.sqrt(d),
    "2sqrt": lambda d: 2 * math.sqrt(d),
    "D/2": lambda d: d / 2,
    "D": lambda d: float(d),
    "2D": lambda d: 2.0 * d,
    "4D": lambda d: 4.0 * d,
}


def eta_value(spec: str | None, dim: int) -> tuple[float | str | None, float | None]:
    """``--eta`` as the head's ``(eta, eta_init)``: a number, a rule of ``D`` (``sqrt``,
    ``2sqrt``, ``D/2``, ``D``, ``2D``, ``4D``), ``learned`` or ``learned:START`` (a learned
    exponent starting at a number or rule), or ``None`` (the package default)."""
    if spec is None:
        return None, None
    if spec.startswith("learned"):
        start = spec.partition(":")[2]
        return "learned", eta_value(start, dim)[0] if start else None
    return (RULES[spec](dim) if spec in RULES else float(spec)), None
