"""Test-wide setup.

Keras fixes its backend at first import, and test modules import keras before
fedjax_keras (which would otherwise pick JAX), so choose it here.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# The CLI turns on JAX's persistent compilation cache for its whole process; the
# tests run it in-process, and a program loaded from disk is not compiled, which
# the compile-counting tests would see. tests/test_compile_cache.py tests the cache.
os.environ.setdefault("FEDJAX_KERAS_COMPILE_CACHE", "0")
