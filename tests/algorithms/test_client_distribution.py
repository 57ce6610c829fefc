"""Per-client percentiles: numpy's percentiles of per-client metrics computed by hand."""

import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

from fedjax_keras.algorithms import build_fed_eval, client_percentiles
from fedjax_keras.testing import toy_models

SIZES = [5, 2, 0, 4, 7, 1, 3]


def test_fed_eval_per_client_percentiles_equal_numpy_on_hand_computed_metrics():
    model = wrap(toy_models.mlp(seed=91))
    cohort = make_clients(SIZES, seed=92)
    seen = []
    process = build_fed_eval(
        model,
        per_client=True,
        batch_size=2,
        chunk_size=3,
        host_metrics=lambda state, metrics: seen.append(sorted(metrics)) or {"mine": 1},
    )
    out = process.next(process.initialize(), cohort)
    losses, accuracies = [], []
    for _, client in cohort:
        if len(client["y"]) == 0:
            continue
        logits = model.apply(model.initial_weights, client["x"])
        losses.append(
            float(optax.softmax_cross_entropy_with_integer_labels(logits, client["y"]).mean())
        )
        accuracies.append(float(np.mean(np.argmax(logits, -1) == client["y"])))
    for name, values in (("loss", losses), ("sparse_categorical_accuracy", accuracies)):
        assert out.metrics[f"per_client/{name}/mean"] == pytest.approx(np.mean(values), rel=1e-5)
        for q in (10, 25, 50, 75, 90):
            expected = np.percentile(values, q)
            assert out.metrics[f"per_client/{name}/p{q}"] == pytest.approx(expected, rel=1e-5)
    assert "per_client/num_examples/mean" not in out.metrics  # counts are not summarized
    assert out.metrics["mine"] == 1 and "clients/loss" in seen[0]  # the user's hook still runs


def test_client_percentiles_skips_empty_and_non_finite_clients():
    metrics = {
        "loss": 0.5,
        "clients/loss": np.array([1.0, np.nan, 3.0, 2.0, 9.0], np.float32),
        "clients/acc": np.array([0.5, np.nan, 1.0, 0.0, 0.25]),
        "clients/num_examples": np.array([3, 0, 2, 5, 0]),
        "clients/cluster": np.array([0, 1, 1, 0, 1]),
    }
    result = client_percentiles(["loss"], (0, 50, 100, 12.5))(None, metrics)
    assert result == {
        "per_client/loss/mean": 2.0,
        "per_client/loss/p0": 1.0,
        "per_client/loss/p50": 2.0,
        "per_client/loss/p100": 3.0,
        "per_client/loss/p12.5": pytest.approx(np.percentile([1.0, 3.0, 2.0], 12.5)),
    }
    everything = client_percentiles(percentiles=(50,))(None, metrics)
    assert sorted(everything) == [
        "per_client/acc/mean",
        "per_client/acc/p50",
        "per_client/loss/mean",
        "per_client/loss/p50",
    ]
    nobody = client_percentiles(["loss"], (50,))(
        None, {"clients/loss": np.array([np.nan]), "clients/num_examples": np.array([0])}
    )
    assert np.isnan(nobody["per_client/loss/mean"]) and np.isnan(nobody["per_client/loss/p50"])
    with pytest.raises(ValueError, match=r"percentiles must be numbers in \[0, 100\]"):
        client_percentiles(percentiles=(50, 101))
