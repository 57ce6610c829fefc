"""Plain-Python references for the engine tests: one client, one batch at a time.

Nothing here runs the engine (no `ClientProgram`, runner or accumulator): every
client trains with `Model.train_step` in a Python loop, deltas are averaged in
float64 NumPy, and the server optimizer is applied by hand. The only engine
facts the references share are the documented key derivation
(`fedjax_keras.client.client_key` / `step_key`) and the per-round seeds below.
"""

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

from fedjax_keras import from_keras_model
from fedjax_keras.client import client_key, round_key, step_key
from fedjax_keras.data import FederatedData, plan_cohort
from fedjax_keras.models import ModelWeights
from fedjax_keras.optimizers import from_optax

NUM_CLASSES = 3


# ------------------------------------------------------------------ models, data
def wrap(net: keras.Model, x_shape=(4,), *, weighted_metrics=True):
    """`from_keras_model` with sparse cross-entropy on logits and accuracy."""
    return from_keras_model(
        net,
        {"x": np.zeros((2,) + tuple(x_shape), np.float32), "y": np.zeros((2,), np.int32)},
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


def make_clients(sizes, x_shape=(4,), *, seed=0, ids=None) -> FederatedData:
    """Clients with the given example counts; ids default to 10 * i + 3 (not positions)."""
    rng = np.random.default_rng(seed)
    ids = [10 * i + 3 for i in range(len(sizes))] if ids is None else ids
    return FederatedData.from_client_dict(
        {
            cid: {
                "x": rng.normal(size=(n,) + tuple(x_shape)).astype(np.float32),
                "y": rng.integers(0, NUM_CLASSES, n).astype(np.int32),
            }
            for cid, n in zip(ids, sizes)
        }
    )


# ------------------------------------------------------------------ batches, keys
def round_seeds(seed: int, round_num: int):
    """(plan_cohort shuffle seed, round key) of round ``round_num``, derived as the engine does."""
    return seed * 2**32 + round_num, round_key(np.array([seed, round_num], np.uint32))


def planned_batches(cohort: FederatedData, position: int, *, batch_size, epochs, shuffle, seed):
    """Client ``position``'s real batches as `plan_cohort` lays them out (one client per chunk)."""
    plan = plan_cohort(
        cohort,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=shuffle,
        seed=seed,
        chunk_size=1,
        step_buckets="exact",
    )
    for chunk in plan.chunks():
        if int(chunk.client_positions[0]) == position:
            return [
                {"x": chunk.x[0, s], "y": chunk.y[0, s], "mask": chunk.mask[0, s]}
                for s in range(int(chunk.num_steps[0]))
            ]
    raise AssertionError(f"position {position} not in the plan")


def sliced_batches(x, y, batch_size: int, epochs: int = 1):
    """Unshuffled batches cut by hand (Keras ``fit(shuffle=False)`` order), the last one short."""
    out = []
    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            out.append({"x": x[start : start + batch_size], "y": y[start : start + batch_size]})
    return out


# ------------------------------------------------------------------ local training
@functools.cache
def _jitted_train_step(model, optimizer):
    return jax.jit(lambda w, s, b, k: model.train_step(w, s, b, rng=k, optimizer=optimizer)[:2])


def local_train(model, weights: ModelWeights, batches, optimizer, keys=None):
    """``model.train_step`` over ``batches`` from a fresh optimizer state; returns final weights."""
    step = _jitted_train_step(model, optimizer)
    state = optimizer.init(weights.trainable)
    for i, batch in enumerate(batches):
        key = jax.random.PRNGKey(0) if keys is None else keys[i]
        weights, state = step(weights, state, batch, key)
    return weights


def corrected_sgd(model, weights: ModelWeights, batches, lr: float, correction):
    """Plain SGD on ``grad(loss) + correction(trainable)`` (FedProx, SCAFFOLD), by hand."""
    grad = jax.jit(jax.grad(lambda t, nt, b: model.loss(ModelWeights(t, nt), b, training=True)))
    trainable = dict(weights.trainable)
    for batch in batches:
        g = grad(trainable, weights.non_trainable, batch)
        extra = correction(trainable)
        trainable = {k: trainable[k] - lr * (g[k] + extra[k]) for k in trainable}
    return ModelWeights(trainable, weights.non_trainable)


def delta(final: ModelWeights, start: ModelWeights) -> dict:
    return {
        k: np.asarray(final.trainable[k], np.float64) - np.asarray(start.trainable[k], np.float64)
        for k in start.trainable
    }


def weighted_mean(trees, weights) -> dict:
    """Weighted mean of dicts of arrays, in float64."""
    weights = np.asarray(weights, np.float64)
    return {k: sum(w * t[k] for w, t in zip(weights, trees)) / weights.sum() for k in trees[0]}


def server_step(server_optimizer, trainable, opt_state, mean_delta):
    """The server optimizer on the pseudo-gradient ``-mean_delta``."""
    pseudo = {k: -jnp.asarray(v, jnp.float32) for k, v in mean_delta.items()}
    updates, opt_state = server_optimizer.update(pseudo, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state


def fed_avg_rounds(
    model,
    cohorts,
    *,
    client_optimizer,
    server_optimizer=None,
    batch_size,
    epochs=1,
    shuffle=True,
    seed=0,
    weighting="num_examples",
):
    """Reference FedAvg over ``cohorts`` (one per round): returns the final `ModelWeights`.

    Args:
      client_optimizer: an `Optimizer`.
      server_optimizer: an optax transform (default ``optax.sgd(1.0)``).
    """
    server_optimizer = server_optimizer or optax.sgd(1.0)
    server = model.initial_weights
    opt_state = server_optimizer.init(server.trainable)
    for round_num, cohort in enumerate(cohorts):
        plan_seed, rkey = round_seeds(seed, round_num)
        deltas, weights = [], []
        for position, cid in enumerate(cohort.client_ids):
            batches = planned_batches(
                cohort,
                position,
                batch_size=batch_size,
                epochs=epochs,
                shuffle=shuffle,
                seed=plan_seed,
            )
            ckey = client_key(rkey, jnp.int32(position), jnp.int32(cid))
            keys = [step_key(ckey, s) for s in range(len(batches))]
            final = local_train(model, server, batches, client_optimizer, keys)
            n = int(cohort.client_sizes[position])
            if n == 0:
                continue
            deltas.append(delta(final, server))
            weights.append(n if weighting == "num_examples" else 1.0)
        trainable, opt_state = server_step(
            server_optimizer, server.trainable, opt_state, weighted_mean(deltas, weights)
        )
        server = ModelWeights(trainable, server.non_trainable)
    return server


SGD = from_optax(optax.sgd(0.1))
