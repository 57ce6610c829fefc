"""Personalization evaluation: 'before' is build_fed_eval; 'after' is fine-tuning by hand."""

import numpy as np
import optax
import pytest
from engine_reference import make_clients, sliced_batches, wrap
from personal_reference import sgd

import fedjax_keras as fk
from fedjax_keras.algorithms import (
    build_fed_eval,
    build_personalization_eval,
    build_weighted_fed_avg,
    join_train_test,
)
from fedjax_keras.models import with_example_fields

BATCH, LR, STEPS = 3, 0.1, 2
SIZES = [9, 4, 0, 7, 12, 2]


@pytest.fixture(scope="module")
def model():
    return wrap(fk.testing.toy_models.mlp(seed=101))


@pytest.fixture(scope="module")
def splits():
    return make_clients(SIZES, seed=102).train_test_split(0.4, seed=0)


def test_join_train_test_puts_each_clients_train_then_test_examples_with_flags(splits):
    train, test = splits
    joined = join_train_test(train, test, train_repeats=2)
    assert joined.client_ids == train.client_ids
    for (_, tr), (_, te), (_, both) in zip(train, test, joined):
        x, flags = both["x"]["inputs"], both["x"]["is_test"]
        np.testing.assert_array_equal(x, np.concatenate([tr["x"], tr["x"], te["x"]]))
        np.testing.assert_array_equal(both["y"], np.concatenate([tr["y"], tr["y"], te["y"]]))
        assert flags.tolist() == [False] * 2 * len(tr["y"]) + [True] * len(te["y"])
    with pytest.raises(ValueError, match="same clients in the same order"):
        join_train_test(train, test.subset([1, 0, 2, 3, 4, 5]))


@pytest.fixture(scope="module")
def evaluated(model, splits):
    train, test = splits
    process = build_personalization_eval(
        model, optax.sgd(LR), fine_tune_steps=STEPS, batch_size=BATCH, chunk_size=4
    )
    cohort = join_train_test(train, test).subset([4, 0, 2, 5, 3, 1])
    return cohort, process.next(process.initialize(), cohort).metrics


def test_before_equals_fed_eval_on_the_test_splits(model, splits, evaluated):
    _, test = splits
    cohort, metrics = evaluated
    reference = build_fed_eval(model, per_client=True, batch_size=BATCH)
    expected = reference.next(reference.initialize(), test.subset([4, 0, 2, 5, 3, 1])).metrics
    for name in ("loss", "sparse_categorical_accuracy"):
        np.testing.assert_allclose(
            metrics[f"clients/before/{name}"], expected[f"clients/{name}"], rtol=1e-5
        )
        assert metrics[name] == pytest.approx(expected[name], rel=1e-5)
        assert metrics[f"before/{name}"] == pytest.approx(expected[name], rel=1e-5)
        for stat in ("mean", "p10", "p50", "p90"):
            got = metrics[f"per_client/before/{name}/{stat}"]
            assert got == pytest.approx(expected[f"per_client/{name}/{stat}"], rel=1e-5)
    assert metrics["clients/num_examples"].tolist() == expected["clients/num_examples"].tolist()


def test_after_is_the_fine_tuned_model_on_the_test_split_by_hand(model, splits, evaluated):
    train, test = splits
    cohort, metrics = evaluated
    losses, total = [], {"loss": 0.0, "n": 0}
    for position, cid in enumerate(cohort.client_ids):
        tr, te = train.client_by_id(cid), test.client_by_id(cid)
        batches = sliced_batches(tr["x"], tr["y"], BATCH)[:STEPS]
        tuned = sgd(model, model.initial_weights, batches, LR)
        assert metrics["clients/fine_tune_steps"][position] == len(batches)
        assert metrics["clients/num_train_examples"][position] == len(tr["y"])
        if len(te["y"]) == 0:
            assert np.isnan(metrics["clients/after/loss"][position])
            continue
        logits = model.apply(tuned, te["x"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, te["y"])
        accuracy = float(np.mean(np.argmax(logits, -1) == te["y"]))
        assert metrics["clients/after/loss"][position] == pytest.approx(
            float(loss.mean()), rel=1e-5
        )
        got = metrics["clients/after/sparse_categorical_accuracy"][position]
        assert got == pytest.approx(accuracy, abs=1e-6)
        losses.append(float(loss.mean()))
        total["loss"] += float(loss.sum())
        total["n"] += len(te["y"])
    assert metrics["after/loss"] == pytest.approx(total["loss"] / total["n"], rel=1e-5)
    assert metrics["per_client/after/loss/p25"] == pytest.approx(
        np.percentile(losses, 25), rel=1e-5
    )


def test_shuffle_and_epochs_are_refused_with_the_fix(model):
    with pytest.raises(ValueError, match="shuffle must be False"):
        build_personalization_eval(model, optax.sgd(LR), shuffle=True)
    with pytest.raises(ValueError, match=r"train_repeats=E"):
        build_personalization_eval(model, optax.sgd(LR), epochs=2)
    flagged = with_example_fields(model, {"is_test": bool})
    assert sorted(flagged.input_spec["x"]) == ["inputs", "is_test"]


def test_fine_tuning_a_fed_avg_model_helps_heterogeneous_clients():
    """After 10 FedAvg rounds on LEAF Synthetic, 5 local steps raise most clients' accuracy."""
    data = fk.data.synthetic_leaf(num_clients=16, seed=7, size_median=40)
    train, test = data.train_test_split(0.3, seed=0)
    model = wrap(fk.testing.toy_models.mlp(60, 16, 10, seed=103), x_shape=(60,))
    fed_avg = build_weighted_fed_avg(model, optax.sgd(0.05), batch_size=10)
    state = fed_avg.initialize(0)
    for r in range(10):
        state = fed_avg.next(state, train.sample_clients(8, seed=r)).state
    evaluate = build_personalization_eval(model, optax.sgd(0.05), fine_tune_steps=5, batch_size=10)
    eval_state = evaluate.set_model_weights(evaluate.initialize(), state.model)
    metrics = evaluate.next(eval_state, join_train_test(train, test)).metrics
    name = "sparse_categorical_accuracy"
    assert metrics[f"after/{name}"] > metrics[f"before/{name}"] + 0.05
    assert metrics[f"per_client/after/{name}/p50"] >= metrics[f"per_client/before/{name}/p50"]
