"""TensorBoard event files through tensorboardX (an optional extra; no TensorFlow).

``pip install fedjax_keras[tensorboard]``. Every numeric row entry becomes a
scalar at step ``round``. A resumed experiment purges the steps after its
checkpoint that a crashed run wrote, so each curve holds each round once.
"""

import os

from fedjax_keras.training._callbacks import Callback, _is_number

_SKIPPED = ("round",)


class TensorBoard(Callback):
    """Writes each round's numeric metrics as TensorBoard scalars under ``log_dir``.

    Args:
      log_dir: the folder of event files (``tensorboard --logdir``).
      flush_every: rounds between flushes to disk (1: every round).

    Raises:
      ImportError: tensorboardX is not installed (the message says how).
    """

    def __init__(self, log_dir, *, flush_every: int = 1):
        try:
            import tensorboardX  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "TensorBoard logging needs tensorboardX: pip install fedjax_keras[tensorboard] "
                "(or pip install tensorboardX)."
            ) from e
        self.log_dir, self.flush_every = os.fspath(log_dir), flush_every
        self._writer = None

    def on_begin(self, start_round, history):
        from tensorboardX import SummaryWriter

        # purge_step drops what an interrupted run wrote after the checkpoint; the
        # suffix keeps a resume within the same second from overwriting its file.
        self._writer = SummaryWriter(
            self.log_dir,
            purge_step=start_round + 1 if start_round else None,
            filename_suffix=f".from_round_{start_round}",
        )

    def on_round_end(self, row, state):
        step = row["round"]
        for key, value in row.items():
            if key not in _SKIPPED and _is_number(value):
                self._writer.add_scalar(key, value, global_step=step)
        if step % self.flush_every == 0:
            self._writer.flush()

    def on_end(self, state, history):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
