"""`as_optimizer`: what users pass as an optimizer, normalised once at the boundary.

Sits above both adapters (optax in ``_functional``, Keras in ``_keras``), so
neither imports the other.
"""

from typing import Any

import optax

from fedjax_keras.optimizers._functional import Optimizer, Params, from_optax
from fedjax_keras.optimizers._keras import from_keras_optimizer


def _is_keras_optimizer(obj: Any) -> bool:
    return hasattr(obj, "stateless_apply") and hasattr(obj, "get_config")


def as_optimizer(obj: Any, params_template: Params, *, argument: str = "optimizer") -> Optimizer:
    """Normalises what users pass as an optimizer into an `Optimizer`.

    Args:
      obj: an `Optimizer`, an optax ``GradientTransformation``, a Keras 3
        optimizer, or a zero-argument callable returning one of these (TFF's
        ``client_optimizer_fn`` style).
      params_template: a pytree shaped like the parameters to optimize (a Keras
        optimizer needs it to build its slots).
      argument: the argument's name, for error messages.

    Raises:
      TypeError: for anything else.
    """
    if isinstance(obj, Optimizer):
        return obj
    if isinstance(obj, optax.GradientTransformation) or (
        hasattr(obj, "init") and hasattr(obj, "update") and not _is_keras_optimizer(obj)
    ):
        return from_optax(obj)
    if _is_keras_optimizer(obj):
        return from_keras_optimizer(obj, params_template)
    if callable(obj):
        try:
            made = obj()
        except TypeError as e:
            raise TypeError(
                f"`{argument}` is a callable but could not be called with no arguments ({e}); "
                "pass an optax transform, a Keras optimizer, or a zero-argument function "
                "returning one."
            ) from e
        if callable(made) and not (
            _is_keras_optimizer(made) or isinstance(made, optax.GradientTransformation)
        ):
            raise TypeError(f"`{argument}`() returned {made!r}, not an optimizer.")
        return as_optimizer(made, params_template, argument=argument)
    raise TypeError(
        f"`{argument}` must be an optax GradientTransformation (e.g. optax.sgd(0.1)), a Keras 3 "
        f"optimizer (e.g. keras.optimizers.SGD(0.1)), or a zero-argument callable returning "
        f"one; received {obj!r}."
    )
