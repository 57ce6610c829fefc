"""Tests for fedjax_keras.data.plan_cohort: padded, bucketed, chunked client batches.

The reference is a plain Python batcher (loop over clients, epochs, batches).
Every example's y is its row number in the cohort, so batches can be traced back.
"""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_keras.data import ClientBatches, FederatedData, _batching, plan_cohort


def make_cohort(sizes, seed=0, fill=None):
    n = int(np.sum(sizes))
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, 2, 3)).astype(np.float32)
    if fill is not None:
        image[:] = fill
    x = {"image": image, "aux": [np.arange(n, dtype=np.float64) + 0.5]}
    y = np.arange(n, dtype=np.int64)
    return FederatedData.from_arrays(x, y, np.concatenate([[0], np.cumsum(sizes)]))


def reference_batches(cohort, batch_size, epochs):
    """{position: [row numbers of each batch]}: Keras fit(shuffle=False) batch order."""
    out = {}
    for position in range(cohort.num_clients):
        rows = cohort.client(position)["y"]
        out[position] = [
            rows[start : start + batch_size].tolist()
            for _ in range(epochs)
            for start in range(0, len(rows), batch_size)
        ]
    return out


def batches_of(plan, cohort):
    """{position: [rows of each real step]} read back from the chunks, checking layout."""
    out = {}
    for chunk in plan.chunks():
        k, s, b = chunk.mask.shape
        assert chunk.y.shape == (k, s, b)
        assert chunk.x["image"].shape == (k, s, b, 2, 3)
        for i, position in enumerate(chunk.client_positions):
            mask = chunk.mask[i]
            # Padding is zero in every leaf.
            for leaf in jax.tree_util.tree_leaves((chunk.x, chunk.y)):
                assert not np.any(leaf[i][~mask])
            if position < 0:
                assert not mask.any() and chunk.num_examples[i] == 0 and chunk.num_steps[i] == 0
                continue
            steps = int(chunk.num_steps[i])
            n = cohort.client_sizes[position]
            assert chunk.num_examples[i] == n
            assert mask[:steps].any(axis=1).all() and not mask[steps:].any()
            # Real examples fill each batch from its start.
            counts = mask.sum(axis=1)
            np.testing.assert_array_equal(mask, np.arange(b) < counts[:, None])
            rows = [chunk.y[i, t][mask[t]].tolist() for t in range(steps)]
            # The other leaves hold the same rows' values.
            for t in range(steps):
                real = chunk.y[i, t][mask[t]]
                np.testing.assert_array_equal(
                    chunk.x["image"][i, t][mask[t]], cohort.examples["x"]["image"][real]
                )
                np.testing.assert_array_equal(chunk.x["aux"][0][i, t][mask[t]], real + 0.5)
            assert position not in out
            out[int(position)] = rows
    return out


SIZES = [5, 0, 2, 9, 1, 7, 3]


@pytest.mark.parametrize("epochs", [1, 3])
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 10])
@pytest.mark.parametrize("step_buckets", ["pow2", "exact", (1, 2, 4, 16, 64)])
def test_unshuffled_equals_reference(epochs, chunk_size, step_buckets):
    cohort = make_cohort(SIZES)
    plan = plan_cohort(
        cohort,
        batch_size=2,
        epochs=epochs,
        shuffle=False,
        chunk_size=chunk_size,
        step_buckets=step_buckets,
    )
    assert batches_of(plan, cohort) == reference_batches(cohort, 2, epochs)


def test_chunk_types_and_metadata():
    cohort = make_cohort(SIZES)
    plan = plan_cohort(cohort, batch_size=2, epochs=2, seed=0, chunk_size=3)
    np.testing.assert_array_equal(plan.client_num_examples, SIZES)
    np.testing.assert_array_equal(plan.client_num_steps, 2 * np.ceil(np.divide(SIZES, 2)))
    assert plan.num_examples == sum(SIZES)
    # Stable sort by steps, descending: 9 (10 steps), 7 (8), 5 (6), 3 (4), 2 (2), 1 (2), 0.
    np.testing.assert_array_equal(plan.order, [3, 5, 0, 6, 2, 4, 1])
    assert plan.chunk_shapes == [(3, 16, 2), (3, 4, 2), (3, 1, 2)]
    chunks = list(plan.chunks())
    assert len(chunks) == plan.num_chunks == 3
    for chunk, shape in zip(chunks, plan.chunk_shapes):
        assert isinstance(chunk, ClientBatches)
        assert chunk.mask.shape == shape and chunk.mask.dtype == bool
        assert chunk.y.dtype == np.int64 and chunk.x["image"].dtype == np.float32
        for field in (chunk.client_positions, chunk.num_examples, chunk.num_steps):
            assert field.dtype == np.int32 and field.shape == (3,)
    np.testing.assert_array_equal(chunks[1].client_positions, [6, 2, 4])
    np.testing.assert_array_equal(chunks[1].num_steps, [4, 2, 2])
    np.testing.assert_array_equal(chunks[2].client_positions, [1, -1, -1])
    with pytest.raises(IndexError, match="index"):
        plan.chunk(3)


def test_padding_fraction_and_dummy_clients_by_hand():
    # sizes 5, 0, 2, 9 with batch 2: steps 3, 0, 1, 5; order 3, 0, 2 | 1 + 2 dummies.
    cohort = make_cohort([5, 0, 2, 9])
    pow2 = plan_cohort(cohort, batch_size=2, seed=1, chunk_size=3)
    assert pow2.chunk_shapes == [(3, 8, 2), (3, 1, 2)]  # 5 -> 8; an empty chunk keeps 1 step
    assert pow2.padding_fraction == pytest.approx(1 - 16 / (3 * 8 * 2 + 3 * 1 * 2))
    exact = plan_cohort(cohort, batch_size=2, seed=1, chunk_size=3, step_buckets="exact")
    assert exact.chunk_shapes == [(3, 5, 2), (3, 1, 2)]
    assert exact.padding_fraction == pytest.approx(1 - 16 / (30 + 6))
    last = list(exact.chunks())[-1]
    np.testing.assert_array_equal(last.client_positions, [1, -1, -1])
    assert not last.mask.any() and not last.x["image"].any() and not last.y.any()
    np.testing.assert_array_equal(last.num_examples, [0, 0, 0])


@pytest.mark.parametrize("gather_all_slots", [0.0, 2.0])  # force each materialisation path
def test_padding_is_zero_even_when_data_is_nan(monkeypatch, gather_all_slots):
    monkeypatch.setattr(_batching, "_GATHER_ALL_SLOTS", gather_all_slots)
    cohort = make_cohort([3, 1, 6], fill=np.nan)
    plan = plan_cohort(cohort, batch_size=4, seed=0, chunk_size=2)
    for chunk in plan.chunks():
        image = chunk.x["image"]
        assert np.isnan(image[chunk.mask]).all()
        np.testing.assert_array_equal(image[~chunk.mask], 0.0)
        assert not np.signbit(image[~chunk.mask]).any()


def test_explicit_step_buckets():
    cohort = make_cohort([9, 3, 1])  # steps 5, 2, 1 with batch 2
    plan = plan_cohort(cohort, batch_size=2, seed=0, chunk_size=1, step_buckets=[2, 6, 7])
    assert [shape[1] for shape in plan.chunk_shapes] == [6, 2, 2]
    with pytest.raises(ValueError, match=r"step_buckets=\[1, 4\] allows at most 4 steps.*5"):
        plan_cohort(cohort, batch_size=2, seed=0, step_buckets=[1, 4])


def shuffled_checks(plan, cohort, epochs, batch_size):
    got = batches_of(plan, cohort)
    for position, batches in got.items():
        rows = cohort.client(position)["y"].tolist()
        per_epoch = -(-len(rows) // batch_size)
        assert len(batches) == epochs * per_epoch
        for e in range(epochs):
            epoch = batches[e * per_epoch : (e + 1) * per_epoch]
            # Full batches then one partial: never crossing epochs, never dropped.
            assert [len(b) for b in epoch] == [
                min(batch_size, len(rows) - i) for i in range(0, len(rows), batch_size)
            ]
            assert sorted(r for batch in epoch for r in batch) == rows
    return got


@pytest.mark.parametrize("epochs", [1, 2])
def test_shuffled_batches_are_per_epoch_permutations(epochs):
    cohort = make_cohort([12, 0, 5, 30, 1])
    plan = plan_cohort(cohort, batch_size=4, epochs=epochs, seed=3, chunk_size=2)
    got = shuffled_checks(plan, cohort, epochs, 4)
    assert got[3][:8] != reference_batches(cohort, 4, epochs)[3][:8]  # really shuffled
    if epochs == 2:
        assert got[3][:8] != got[3][8:]  # a fresh permutation each epoch


def test_shuffle_is_seeded():
    cohort = make_cohort([12, 7, 30])
    a = batches_of(plan_cohort(cohort, batch_size=4, seed=5), cohort)
    b = batches_of(plan_cohort(cohort, batch_size=4, seed=5), cohort)
    c = batches_of(plan_cohort(cohort, batch_size=4, seed=6), cohort)
    assert a == b
    assert a != c
    assert all(a[p] != c[p] for p in (0, 2))


def test_chunking_and_buckets_do_not_change_any_clients_batches():
    cohort = make_cohort([4, 17, 0, 9, 9, 2, 30, 1])
    results = [
        batches_of(
            plan_cohort(
                cohort, batch_size=3, epochs=2, seed=11, chunk_size=k, step_buckets=buckets
            ),
            cohort,
        )
        for k in (1, 3, None)
        for buckets in ("pow2", "exact")
    ]
    assert all(r == results[0] for r in results[1:])


def test_a_clients_shuffle_depends_only_on_seed_position_and_epoch():
    # Same client at position 1 in two cohorts whose other clients differ.
    a, b = make_cohort([3, 8]), make_cohort([20, 8, 5])
    plan_a = plan_cohort(a, batch_size=3, epochs=2, seed=9)
    plan_b = plan_cohort(b, batch_size=3, epochs=2, seed=9, chunk_size=1)
    assert batches_of(plan_a, a)[1] == [
        [r - 20 + 3 for r in batch] for batch in batches_of(plan_b, b)[1]
    ]


def test_lexsort_fallback_gives_the_same_permutation(monkeypatch):
    cohort = make_cohort([12, 7, 30, 0, 5])
    want = batches_of(plan_cohort(cohort, batch_size=4, epochs=2, seed=2), cohort)
    monkeypatch.setattr(_batching, "_PACKED_BITS", 0)
    assert batches_of(plan_cohort(cohort, batch_size=4, epochs=2, seed=2), cohort) == want


def test_all_empty_clients_give_one_masked_step():
    cohort = FederatedData.from_arrays(np.zeros((0, 2)), np.zeros(0), [0, 0, 0])
    plan = plan_cohort(cohort, batch_size=4, seed=0)
    assert plan.chunk_shapes == [(2, 1, 1)] and plan.padding_fraction == 1.0
    uncapped = plan_cohort(cohort, batch_size=4, seed=0, cap_batch=False)
    assert uncapped.chunk_shapes == [(2, 1, 4)]
    (chunk,) = plan.chunks()
    assert not chunk.mask.any()
    np.testing.assert_array_equal(chunk.num_steps, [0, 0])


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 11), min_size=1, max_size=7),
    batch_size=st.integers(1, 5),
    epochs=st.integers(1, 3),
    chunk_size=st.one_of(st.none(), st.integers(1, 4)),
    step_buckets=st.sampled_from(["pow2", "exact"]),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_property_masked_examples_reconstruct_every_client(
    sizes, batch_size, epochs, chunk_size, step_buckets, shuffle, seed
):
    cohort = make_cohort(sizes)
    plan = plan_cohort(
        cohort,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=shuffle,
        seed=seed,
        chunk_size=chunk_size,
        step_buckets=step_buckets,
    )
    assert sum(shape[0] for shape in plan.chunk_shapes) >= len(sizes)
    real = sum(int(c.mask.sum()) for c in plan.chunks())
    assert real == epochs * sum(sizes)
    if shuffle:
        shuffled_checks(plan, cohort, epochs, batch_size)
    else:
        assert batches_of(plan, cohort) == reference_batches(cohort, batch_size, epochs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0, "seed": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.0, "seed": 0}, ValueError, "batch_size"),
        (
            {"batch_size": 2, "epochs": 0, "seed": 0},
            ValueError,
            "epochs must be a positive integer",
        ),
        ({"batch_size": 2, "chunk_size": 0, "seed": 0}, ValueError, "chunk_size"),
        ({"batch_size": 2}, ValueError, "seed is None but shuffle=True"),
        ({"batch_size": 2, "seed": -1}, ValueError, r"seed must be an integer in \[0, 2\*\*64\)"),
        (
            {"batch_size": 2, "seed": 0, "step_buckets": "linear"},
            ValueError,
            "step_buckets.*'linear'",
        ),
        (
            {"batch_size": 2, "seed": 0, "step_buckets": [4, 2]},
            ValueError,
            "step_buckets.*increasing",
        ),
        ({"batch_size": 2, "seed": 0, "step_buckets": []}, ValueError, "step_buckets"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        plan_cohort(make_cohort([3, 4]), **kwargs)


def test_bad_cohorts_raise():
    with pytest.raises(TypeError, match="cohort must be a FederatedData"):
        plan_cohort([(np.zeros(2), np.zeros(2))], batch_size=2, seed=0)
    empty = FederatedData.from_arrays(np.zeros((0, 2)), np.zeros(0), [0])
    with pytest.raises(ValueError, match="cohort has no clients"):
        plan_cohort(empty, batch_size=2, seed=0)


def test_geometric_buckets_are_powers_of_two_and_three_quarters_of_them():
    from fedjax_keras.data import bucket

    needed = np.arange(1, 200)
    rounded = bucket(needed, "geometric")
    allowed = sorted({2**k for k in range(9)} | {3 * 2**k for k in range(8)})
    # Each count goes to the smallest allowed value that holds it (hand reference).
    expected = [min(a for a in allowed if a >= n) for n in needed]
    assert rounded.tolist() == expected


@pytest.mark.parametrize(
    "sizes, batch_size, width",
    [
        ([10, 3, 7], 1000, 16),  # every client under batch_size: the next power of two
        ([60], 10**7, 64),
        ([8, 1], 1000, 8),
        ([1, 1], 1000, 1),
        ([5, 0, 2], 6, 6),  # never above batch_size
        ([5, 30], 20, 20),  # a client needs several batches: full width
        ([20], 20, 20),
    ],
)
def test_batch_width_is_capped_at_the_largest_client(sizes, batch_size, width):
    plan = plan_cohort(make_cohort(sizes), batch_size=batch_size, seed=0, chunk_size=2)
    assert plan.batch_size == batch_size and plan.padded_batch_size == width
    assert all(shape[2] == width for shape in plan.chunk_shapes)
    assert all(chunk.mask.shape[2] == width for chunk in plan.chunks())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("epochs", [1, 3])
def test_capped_plan_gives_every_client_the_uncapped_batches(shuffle, epochs):
    cohort = make_cohort([10, 0, 3, 7, 1, 9])
    kwargs = dict(batch_size=1000, epochs=epochs, shuffle=shuffle, seed=4, chunk_size=4)
    capped, uncapped = plan_cohort(cohort, **kwargs), plan_cohort(cohort, cap_batch=False, **kwargs)
    assert (capped.padded_batch_size, uncapped.padded_batch_size) == (16, 1000)
    assert batches_of(capped, cohort) == batches_of(uncapped, cohort)
    np.testing.assert_array_equal(capped.chunk_steps, uncapped.chunk_steps)
    slots = int(capped.chunk_steps.sum()) * 4  # per unit of batch width
    assert capped.padding_fraction == pytest.approx(1 - epochs * 30 / (slots * 16))
    assert uncapped.padding_fraction == pytest.approx(1 - epochs * 30 / (slots * 1000))


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 11), min_size=1, max_size=6),
    batch_size=st.integers(1, 40),
    epochs=st.integers(1, 2),
    chunk_size=st.one_of(st.none(), st.integers(1, 4)),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_property_capping_never_changes_a_batch(
    sizes, batch_size, epochs, chunk_size, shuffle, seed
):
    cohort = make_cohort(sizes)
    kwargs = dict(batch_size=batch_size, epochs=epochs, shuffle=shuffle, seed=seed)
    capped = plan_cohort(cohort, chunk_size=chunk_size, **kwargs)
    uncapped = plan_cohort(cohort, chunk_size=chunk_size, cap_batch=False, **kwargs)
    width = capped.padded_batch_size
    assert width <= batch_size and (width == batch_size or width >= max(sizes))
    assert width == batch_size or width & (width - 1) == 0  # a power of two
    assert batches_of(capped, cohort) == batches_of(uncapped, cohort)
    for a, b in zip(capped.chunks(), uncapped.chunks()):
        np.testing.assert_array_equal(a.num_steps, b.num_steps)
        np.testing.assert_array_equal(a.client_positions, b.client_positions)


@pytest.mark.parametrize("runner", ["vmap", "sequential"])
def test_capped_batches_train_exactly_like_uncapped(monkeypatch, runner):
    """Masked means: a narrower padded batch gives the same weights and metrics."""
    import functools

    import keras
    import optax

    import fedjax_keras as fk
    from fedjax_keras.engine import _plan

    data = make_clients_for_training([9, 3, 6, 1, 8, 4])
    net = fk.testing.toy_models.mlp(seed=5)
    model = fk.from_keras_model(
        net,
        {"x": np.zeros((1, 4), np.float32), "y": np.zeros((1,), np.int32)},
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )

    def train(cap_batch):
        monkeypatch.setattr(
            _plan, "plan_cohort", functools.partial(plan_cohort, cap_batch=cap_batch)
        )
        process = fk.algorithms.build_weighted_fed_avg(
            model, optax.sgd(0.1), batch_size=100, epochs=2, chunk_size=4, runner=runner
        )
        state = process.initialize(0)
        for r in range(2):
            out = process.next(state, data.sample_clients(5, seed=r))
            state = out.state
        return out

    capped, uncapped = train(True), train(False)
    fk.testing.assert_trees_all_close(capped.state.model, uncapped.state.model, rtol=1e-6, atol=0)
    for name in ("loss", "sparse_categorical_accuracy", "num_examples"):
        np.testing.assert_allclose(capped.metrics[name], uncapped.metrics[name], rtol=1e-6)
    assert capped.metrics["padding_fraction"] < uncapped.metrics["padding_fraction"] - 0.1


def make_clients_for_training(sizes, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=n).astype(np.int32)
    return FederatedData.from_arrays(x, y, np.concatenate([[0], np.cumsum(sizes)]))
