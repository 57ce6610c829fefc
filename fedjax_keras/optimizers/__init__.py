"""Optimizers as pure (init, update) pairs, from optax or Keras."""

from fedjax_keras.optimizers._as_optimizer import as_optimizer as as_optimizer
from fedjax_keras.optimizers._functional import Optimizer as Optimizer
from fedjax_keras.optimizers._functional import from_optax as from_optax
