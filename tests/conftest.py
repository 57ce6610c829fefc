"""Test-wide setup.

Keras fixes its backend at first import, and test modules import keras before
fedjax_keras (which would otherwise pick JAX), so choose it here.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
