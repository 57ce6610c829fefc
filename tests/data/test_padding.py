"""padding_breakdown / padding_warning: where a round's padded slots come from."""

import doctest
import warnings

import keras
import numpy as np
import optax
import pytest
from engine_reference import wrap

import fedjax_keras as fk
from fedjax_keras.data import (
    FederatedData,
    _padding,
    padding_breakdown,
    padding_warning,
    plan_cohort,
)
from fedjax_keras.errors import PaddingWarning


def cohort_of(sizes):
    n = int(np.sum(sizes))
    return FederatedData.from_arrays(
        np.zeros((n, 2), np.float32), np.zeros(n, np.int32), np.concatenate([[0], np.cumsum(sizes)])
    )


def test_breakdown_by_hand():
    # Batch 4, chunks of 2: sizes 9 (3 steps), 2 (1), 4 (1) -> order 9, 2 | 4 + 1 dummy.
    # Chunk steps (pow2): 4, 1. Slots: 2*4*4 + 2*1*4 = 40.
    plan = plan_cohort(cohort_of([9, 2, 4]), batch_size=4, shuffle=False, chunk_size=2)
    parts = padding_breakdown(plan)
    real, own = 15, (3 + 1 + 1) * 4
    assert parts.real == pytest.approx(real / 40)
    assert parts.partial_batches == pytest.approx((own - real) / 40)
    assert parts.dummy_clients == pytest.approx(4 / 40)  # one dummy, one step of 4
    assert parts.steps == pytest.approx((40 - own - 4) / 40)
    assert sum(parts) == pytest.approx(1.0)
    assert 1 - parts.real == pytest.approx(plan.padding_fraction)


def test_no_warning_at_or_below_the_threshold():
    plan = plan_cohort(cohort_of([8, 8, 8, 8]), batch_size=4, shuffle=False, chunk_size=2)
    assert plan.padding_fraction == 0.0
    assert padding_warning(plan) is None
    plan = plan_cohort(cohort_of([4, 4, 4]), batch_size=4, shuffle=False, chunk_size=2)
    assert plan.padding_fraction == pytest.approx(0.25)
    assert padding_warning(plan) is None
    assert padding_warning(plan, threshold=0.2) is not None


@pytest.mark.parametrize(
    "sizes, kwargs, cause",
    [
        # Clients of 3 to 5 examples in batches of 20 padded to 8: mostly partial batches.
        ([3, 4, 5, 3], dict(batch_size=20, chunk_size=4), "batch_size=20 is large"),
        # One big client and small ones in one chunk: mostly idle steps.
        ([80, 1, 1, 1], dict(batch_size=2, chunk_size=4), "a smaller chunk_size"),
        # 5 clients in chunks of 16: 11 dummy clients.
        ([4] * 5, dict(batch_size=4, chunk_size=16), "a chunk_size that divides"),
    ],
)
def test_warning_names_the_main_cause(sizes, kwargs, cause):
    plan = plan_cohort(cohort_of(sizes), shuffle=False, **kwargs)
    message = padding_warning(plan)
    assert plan.padding_fraction > 0.5
    assert message is not None and cause in message
    assert f"{plan.padding_fraction:.0%} were padding" in message


def test_docstring_example():
    failed, attempted = doctest.testmod(_padding, optionflags=doctest.NORMALIZE_WHITESPACE)[:2]
    assert attempted and not failed


def test_a_process_warns_once_when_a_round_is_mostly_padding():
    model = wrap(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]), x_shape=(2,))
    process = fk.algorithms.build_weighted_fed_avg(model, optax.sgd(0.1), batch_size=2)
    mostly_padding = cohort_of([1, 40])  # one client of 20 steps, one of 1, in one chunk
    expected = padding_warning(plan_cohort(mostly_padding, batch_size=2, shuffle=False))
    assert expected is not None
    state = process.initialize(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            state = process.next(state, mostly_padding).state
    padding = [w for w in caught if issubclass(w.category, PaddingWarning)]
    assert len(padding) == 1
    assert "were padding" in str(padding[0].message) and "chunk_size" in str(padding[0].message)
