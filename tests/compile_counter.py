"""Counting XLA compilations: how the tests check that rounds stop compiling."""

import jax
from jax.experimental.compilation_cache import compilation_cache

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Records the name of every XLA backend compilation while active.

    JAX's persistent compilation cache (which tests/conftest.py turns on for the
    run) is off meanwhile: a program loaded from disk is not compiled, so a
    recompilation the test is there to catch would go unseen.

    Example:
      with CompileCounter() as compiles:
          ...
      assert compiles.names[warmup:] == []
    """

    def __init__(self):
        self.names = []

    def _listen(self, event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            self.names.append(kwargs.get("fun_name", event))

    def __enter__(self):
        self._cache_was_on = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()  # JAX otherwise keeps its first answer
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)
        jax.config.update("jax_enable_compilation_cache", self._cache_was_on)
        compilation_cache.reset_cache()
