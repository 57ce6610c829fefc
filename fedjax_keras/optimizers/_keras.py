"""A Keras 3 optimizer as a pure `Optimizer` over a dict of parameters.

Imported lazily by `as_optimizer`, only when a Keras optimizer is given.

We build a private clone of the user's optimizer on placeholder variables of
the parameters' shapes and use its `stateless_apply`, so learning-rate
schedules, weight decay, clipping and the step counter behave exactly as in
Keras `fit`, and the user's optimizer object is never built or changed.
"""

import re

import jax
import jax.numpy as jnp
import keras
import numpy as np

from fedjax_keras.optimizers._functional import Optimizer


def from_keras_optimizer(optimizer: keras.optimizers.Optimizer, params_template) -> Optimizer:
    """Makes a Keras optimizer functional.

    Args:
      optimizer: a Keras 3 optimizer (built or not; it is cloned from its config).
      params_template: pytree of arrays shaped like the parameters.

    Returns:
      An `Optimizer` whose state is the list of the clone's variable values.
    """
    clone = type(optimizer).from_config(optimizer.get_config())
    leaves, treedef = jax.tree.flatten(params_template)
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params_template)[0]
    ]
    placeholders = [
        keras.Variable(
            np.zeros(np.shape(leaf), np.asarray(leaf).dtype),
            # Keras variable names may not contain '/', but weight-decay exclusion
            # matches on names, so keep the path readable.
            name=re.sub(r"[^0-9A-Za-z_]+", "_", path).strip("_") or "param",
        )
        for path, leaf in zip(paths, leaves)
    ]
    clone.build(placeholders)
    initial = [np.array(v.value) for v in clone.variables]

    def init(params):
        del params  # Keras optimizer slots start from their initializers, not the params.
        return [jnp.asarray(value) for value in initial]

    def update(grads, state, params):
        new_leaves, new_state = clone.stateless_apply(
            state, jax.tree.leaves(grads), jax.tree.leaves(params)
        )
        return jax.tree.unflatten(treedef, list(new_leaves)), list(new_state)

    return Optimizer(init, update)
