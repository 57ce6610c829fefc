"""Making sure Keras runs on JAX, before and after its first import."""

import os
import sys


def select_jax_backend_if_unset() -> None:
    """Sets ``KERAS_BACKEND=jax`` if keras is not imported yet and nobody chose.

    Keras fixes its backend at first import (from ``KERAS_BACKEND`` or
    ``~/.keras/keras.json``), so this must run before ``import keras``. A choice
    the user made in the environment is respected; `check_jax_backend` then
    reports it if it is not JAX.
    """
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        os.environ["KERAS_BACKEND"] = "jax"


def check_jax_backend() -> None:
    """Raises `KerasBackendError` unless keras runs on the JAX backend."""
    import keras

    from fedjax_keras import errors

    backend = keras.config.backend()
    if backend != "jax":
        raise errors.KerasBackendError(
            f"Keras is running on the {backend!r} backend, but fedjax_keras needs "
            "'jax'. Keras fixes its backend at its first import: restart Python and "
            "set the environment variable KERAS_BACKEND=jax (or import fedjax_keras "
            "before keras)."
        )
