"""Plain-Python references for the personalization, clustering and fairness tests.

As `engine_reference`: nothing here runs the engine. Gradients come from
`jax.grad` of `Model.loss` (compiled once per model), batches are cut by hand
in Keras' ``fit(shuffle=False)`` order, and every update rule is written out
in a Python loop over clients and batches.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from engine_reference import sliced_batches

from fedjax_keras.models import ModelWeights


@functools.cache
def loss_grad(model):
    """``(trainable, non_trainable, batch) -> grads`` of the training-mode loss, jitted."""
    return jax.jit(jax.grad(lambda t, nt, b: model.loss(ModelWeights(t, nt), b, training=True)))


@functools.cache
def eval_loss(model):
    """``(weights, batch) -> mean loss`` in inference mode, jitted."""
    return jax.jit(lambda w, b: model.loss(w, b, training=False))


def batches_of(client, batch_size: int, epochs: int = 1):
    return sliced_batches(client["x"], client["y"], batch_size, epochs)


def sgd(model, weights: ModelWeights, batches, lr: float, correction=None, *, only=None):
    """Plain SGD on ``grad + correction(trainable)``; ``only`` restricts the update to paths.

    Returns the final `ModelWeights` (non-trainable weights unchanged).
    """
    grad = loss_grad(model)
    trainable = {k: jnp.asarray(v) for k, v in weights.trainable.items()}
    for batch in batches:
        g = grad(trainable, weights.non_trainable, batch)
        extra = correction(trainable) if correction is not None else {}
        trainable = {
            k: trainable[k] - lr * (g[k] + extra.get(k, 0.0))
            if only is None or k in only
            else trainable[k]
            for k in trainable
        }
    return ModelWeights(trainable, weights.non_trainable)


def mean_loss(model, weights: ModelWeights, client) -> float:
    """The inference-mode mean loss of ``weights`` over all of ``client``'s examples."""
    return float(eval_loss(model)(weights, {"x": client["x"], "y": client["y"]}))


def norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tree.values())))
