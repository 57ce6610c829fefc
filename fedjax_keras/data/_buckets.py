"""Size buckets: a size rounded up to one of a few allowed sizes, so few shapes compile.

One rule for every padded axis of a round: a chunk's step count
(``step_buckets``), the batch axis when every client is smaller than the batch
size ("pow2"), the rows of a source array kept on the device ("geometric"), and
the step axis the chunks of one round share ("pow2").
"""

from collections.abc import Sequence

import numpy as np


def bucket(n, scheme: str | Sequence[int]):
    """``n`` rounded up to an allowed size.

    Args:
      n: an int >= 1, or an int array of them (e.g. [chunks] step counts).
      scheme: "pow2" (the next power of two), "geometric" (the next of 1, 2, 3,
        4, 6, 8, 12, 16, ...: powers of two and three times powers of two, so
        padding is at most a third, not a half, for twice as many shapes),
        "exact" (``n`` itself), or a strictly increasing sequence of allowed sizes.

    Returns:
      An int for an int ``n``, else an int64 array shaped like ``n``.

    Raises:
      ValueError: for an unknown scheme, or a size above the sequence's largest.

    Example:
      >>> bucket(5, "pow2"), bucket(5, "geometric"), bucket([1, 3, 7], (2, 4, 8)).tolist()
      (8, 6, [2, 4, 8])
    """
    needed = np.asarray(n)
    rounded = _rounded(needed, scheme)
    return int(rounded) if needed.ndim == 0 else rounded


def _rounded(needed: np.ndarray, scheme) -> np.ndarray:
    if isinstance(scheme, str):
        if scheme == "exact":
            return needed.astype(np.int64)
        if scheme in ("pow2", "geometric"):
            # (n - 1).bit_length(), vectorised: frexp's exponent of n - 1 (exact for ints < 2**53).
            pow2 = np.left_shift(1, np.frexp(needed - 1)[1]).astype(np.int64)
            if scheme == "pow2":
                return pow2
            three_quarters = 3 * pow2 // 4
            return np.where((pow2 >= 4) & (needed <= three_quarters), three_quarters, pow2)
        raise ValueError(
            f"step_buckets must be 'pow2', 'geometric', 'exact' or an increasing sequence of step "
            f"counts, got {scheme!r}."
        )
    buckets = np.asarray(scheme)
    if (
        buckets.ndim != 1
        or buckets.size == 0
        or not np.issubdtype(buckets.dtype, np.integer)
        or buckets[0] < 1
        or np.any(np.diff(buckets) <= 0)
    ):
        raise ValueError(
            "step_buckets must be 'pow2', 'exact' or a strictly increasing sequence of "
            f"positive integers, got {scheme!r}."
        )
    index = np.searchsorted(buckets, needed)
    if np.any(index == len(buckets)):
        raise ValueError(
            f"step_buckets={buckets.tolist()} allows at most {int(buckets[-1])} steps, but a "
            f"client needs {int(np.max(needed))} (epochs * ceil(examples / batch_size)); add a "
            "larger bucket."
        )
    return buckets[index].astype(np.int64)
