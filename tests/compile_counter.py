"""Counting XLA compilations: how the tests check that rounds stop compiling."""

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Records the name of every XLA backend compilation while active.

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
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)
