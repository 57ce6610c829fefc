"""Hand references for the optimization algorithms' tests (Mime, FedNova, FedDyn, ...).

Plain Python over one client and one batch at a time, float64 NumPy for the
server side; the only model code used is `Model.loss` differentiated with
`jax.grad` (one compiled gradient per model and batch shape, cached, so the
references stay fast).
"""

import functools

import jax
import numpy as np

from fedjax_keras.models import ModelWeights

BATCH = 3


@functools.cache
def _grad_fn(model):
    return jax.jit(
        jax.grad(lambda t, nt, b: model.loss(ModelWeights(t, nt), b, training=True)),
    )


def gradient(model, trainable, non_trainable, batch) -> dict:
    """float64 gradient of the model's mean loss on ``batch`` at ``trainable``."""
    grads = _grad_fn(model)(
        {k: np.asarray(v, np.float32) for k, v in trainable.items()}, non_trainable, batch
    )
    return {k: np.asarray(v, np.float64) for k, v in grads.items()}


def batches(client, batch_size=BATCH, epochs=1):
    """Unshuffled batches of one client (the last one short), epoch after epoch."""
    x, y = client["x"], client["y"]
    return [
        {"x": x[s : s + batch_size], "y": y[s : s + batch_size]}
        for _ in range(epochs)
        for s in range(0, len(y), batch_size)
    ]


def as64(trainable) -> dict:
    return {k: np.asarray(v, np.float64) for k, v in trainable.items()}


def sgd(model, start, non_trainable, client_batches, lr, direction=None):
    """Local SGD from ``start`` (dict): ``y <- y - lr * direction(g(y), y, batch)``."""
    y = as64(start)
    for batch in client_batches:
        g = gradient(model, y, non_trainable, batch)
        d = g if direction is None else direction(g, y, batch)
        y = {k: y[k] - lr * d[k] for k in y}
    return y


def add(a, b, scale=1.0) -> dict:
    return {k: a[k] + scale * b[k] for k in a}


def sub(a, b) -> dict:
    return {k: a[k] - b[k] for k in a}


def mean(trees, weights) -> dict:
    weights = np.asarray(weights, np.float64)
    return {k: sum(w * t[k] for w, t in zip(weights, trees)) / weights.sum() for k in trees[0]}


def full_gradient(model, trainable, non_trainable, client) -> dict:
    """The client's full-batch gradient: example-weighted mean of its batch gradients."""
    parts = batches(client)
    grads = [gradient(model, trainable, non_trainable, b) for b in parts]
    return mean(grads, [len(b["y"]) for b in parts])


# ------------------------------------------------------------------ the sanity task
@functools.cache
def leaf_task():
    """(data, model): LEAF Synthetic(1, 1) with 20 clients; softmax regression from zeros."""
    import keras

    from fedjax_keras import from_keras_model
    from fedjax_keras.data import synthetic_leaf

    data = synthetic_leaf(num_clients=20, seed=0, size_median=25.0, min_size=10, max_size=40)
    net = keras.Sequential([keras.Input((60,)), keras.layers.Dense(10, kernel_initializer="zeros")])
    model = from_keras_model(
        net,
        data.client(0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    return data, model


# Clients of 10 to 40 examples in batches of 10: at most 4 steps, one chunk shape.
LEAF_ENGINE = {"batch_size": 10, "step_buckets": [4]}


def population_loss(model, data, weights) -> float:
    """The model's mean loss over every example of ``data``."""
    return float(model.loss(weights, dict(data.examples), training=False))


def train_rounds(process, data, rounds=10, cohort=5):
    """``rounds`` rounds on seeded cohorts of ``data``; returns the final state."""
    state = process.initialize(0)
    for r in range(rounds):
        state = process.next(state, data.sample_clients(cohort, seed=r)).state
    return state
