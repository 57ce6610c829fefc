"""Ctrl-C (SIGINT) as a request to stop at the next safe point of the round loop.

Python's default handler raises KeyboardInterrupt wherever the main thread is.
When that is inside a callback that JAX runs from C++ (its garbage-collection
hook ``_xla_gc_callback``), the exception is printed as "Exception ignored" and
lost: the run went on and ended with status 0 (1 try in 6). So the handler
only records the request, and the round loop checks it between rounds and
after checkpoint writes, never in the middle of one. A second Ctrl-C stops at
once with ``os._exit(130)``: orbax writes a checkpoint to a temporary
directory and renames it when complete, so the newest complete checkpoint is
whole even then (as after SIGKILL).

The handler writes with ``os.write``: ``print`` from a signal handler can
raise "reentrant call" if the signal lands while the main thread prints.
"""

import os
import shlex
import signal
import threading


def resume_command(run_path: str) -> str:
    """The command that continues the run in ``run_path``."""
    return f"fedjax-keras simulate --resume --run-dir {shlex.quote(run_path)}"


class StopRequest:
    """A context manager that turns SIGINT into ``requested = True`` while it is active.

    Outside the main thread (where Python allows no signal handler) it does
    nothing and Ctrl-C raises KeyboardInterrupt as usual.

    Example:
      >>> with StopRequest("runs/x") as stop:  # doctest: +SKIP
      ...     for r in range(rounds):
      ...         run_round(r)
      ...         if stop.requested:
      ...             break
    """

    def __init__(self, run_path: str):
        self.run_path = run_path
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os.write(
                2,
                f"fedjax-keras: interrupted again, stopping now; continue with: "
                f"{resume_command(self.run_path)}\n".encode(),
            )
            os._exit(130)
        self.requested = True
        os.write(
            2,
            b"fedjax-keras: interrupted; stopping after this round and its checkpoint "
            b"(Ctrl-C again to stop at once).\n",
        )
