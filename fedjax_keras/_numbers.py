"""What counts as a number in an argument, shared by every layer (no package imports here).

Python's ``int`` and ``float`` and numpy's integer and floating scalars
(``np.int64(5)``, ``np.float32(0.2)``: what indexing an array or reading a
config with numpy gives) are numbers. ``bool`` (an ``int`` subclass; ``True``
is never meant as 1), ``np.bool_``, arrays of any rank (also 0-d) and strings
are not, so ``quantized(True)`` or ``krum(np.array(1))`` are refused.
"""

import numpy as np


def is_integer(value) -> bool:
    """An ``int`` or numpy integer scalar, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An integer (`is_integer`), a ``float`` or a numpy floating scalar."""
    return is_integer(value) or isinstance(value, (float, np.floating))
