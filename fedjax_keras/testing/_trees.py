"""Tree assertions that report every mismatching leaf at once (chex style)."""

from typing import Any

import jax
import numpy as np


def _describe(leaf) -> str:
    return f"{np.asarray(leaf).dtype}{list(np.shape(leaf))}"


def assert_trees_all_close(actual: Any, expected: Any, rtol: float = 1e-6, atol: float = 1e-6):
    """Asserts two pytrees have the same structure and close leaves.

    The structures are compared first (a dict with different keys fails here,
    naming the keys); then every leaf pair is compared with
    ``|actual - expected| <= atol + rtol * |expected|`` (NaN only equals NaN at
    the same place) and the error lists *every* mismatching leaf with its path,
    shapes, the largest absolute difference and how many elements differ.

    Args:
      actual: a pytree of arrays.
      expected: a pytree of arrays with the same structure.
      rtol: relative tolerance.
      atol: absolute tolerance.

    Raises:
      AssertionError: on a structure or value mismatch.

    Example:
      >>> import numpy as np
      >>> assert_trees_all_close({'w': np.ones(2)}, {'w': np.ones(2) + 1e-9})
    """
    actual_leaves, actual_def = jax.tree_util.tree_flatten_with_path(actual)
    expected_leaves, expected_def = jax.tree_util.tree_flatten_with_path(expected)
    if actual_def != expected_def:
        actual_paths = {jax.tree_util.keystr(p) for p, _ in actual_leaves}
        expected_paths = {jax.tree_util.keystr(p) for p, _ in expected_leaves}
        raise AssertionError(
            "Tree structures differ.\n"
            f"  only in actual:   {sorted(actual_paths - expected_paths)}\n"
            f"  only in expected: {sorted(expected_paths - actual_paths)}\n"
            f"  actual:   {actual_def}\n  expected: {expected_def}"
        )
    problems = []
    for (path, a), (_, b) in zip(actual_leaves, expected_leaves):
        name = jax.tree_util.keystr(path) or "<root>"
        a_np, b_np = np.asarray(a), np.asarray(b)
        if a_np.shape != b_np.shape:
            problems.append(f"  {name}: shape {_describe(a)} vs expected {_describe(b)}")
            continue
        if a_np.dtype.kind in "biu" and b_np.dtype.kind in "biu":
            close = a_np == b_np
        else:
            a64, b64 = a_np.astype(np.float64), b_np.astype(np.float64)
            close = np.isclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True)
        if not np.all(close):
            diff = np.abs(a_np.astype(np.float64) - b_np.astype(np.float64))
            finite = diff[np.isfinite(diff)]
            largest = float(finite.max()) if finite.size else float("nan")
            problems.append(
                f"  {name}: {int(np.size(close) - np.count_nonzero(close))} of {np.size(close)} "
                f"elements differ, max |diff| {largest:.3g} ({_describe(a)}); "
                f"first: actual {a_np[~close].ravel()[0]!r} vs expected {b_np[~close].ravel()[0]!r}"
            )
    if problems:
        raise AssertionError(
            f"{len(problems)} of {len(actual_leaves)} leaves differ (rtol={rtol}, atol={atol}):\n"
            + "\n".join(problems)
        )
