"""Build-time checks of the algorithms' arguments, with the fix in the message."""

import math

from fedjax_keras._numbers import is_integer, is_real
from fedjax_keras.aggregation import Aggregator, check_aggregator, mean


def check_number(
    value,
    argument: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
) -> float:
    """``value`` as a float, or a ValueError naming ``argument``, the range and the value.

    Args:
      value: the hyper-parameter as given.
      argument: its name, for the message.
      minimum, maximum: the allowed range (None: unbounded).
      strict: the minimum itself is excluded (``> minimum``).
    """
    ok = is_real(value)
    ok = ok and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if strict else float(value) >= minimum
    if ok and maximum is not None:
        ok = float(value) <= maximum
    if not ok:
        low = "" if minimum is None else f"{'>' if strict else '>='} {minimum}"
        high = "" if maximum is None else f"<= {maximum}"
        wanted = " and ".join(part for part in (low, high) if part) or "finite"
        raise ValueError(f"{argument} must be a finite number {wanted}; received {value!r}.")
    return float(value)


def check_count(value, argument: str, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``argument``."""
    if not is_integer(value) or int(value) < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}; received {value!r}.")
    return int(value)


def aggregator_or_default(aggregator, default=mean) -> Aggregator:
    """``aggregator`` checked, or ``default()`` when None (most algorithms: the weighted mean)."""
    return check_aggregator(default() if aggregator is None else aggregator)
