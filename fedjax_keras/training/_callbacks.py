"""The callback interface of `run_experiment`, and early stopping.

A callback sees the experiment's rows: one dict per round, ``{'round': r,
**the round's metrics, 'eval/<name>': ..., 'round_seconds': s}`` (numbers and
strings only). On a resumed experiment `on_begin` receives the rows of the
rounds already done, so a callback with state (the best value so far, a file
to continue) rebuilds it from them, and the resumed run behaves as the
uninterrupted one.
"""

import math


def _is_number(value) -> bool:
    """A row value TensorBoard and plots take: an int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Callback:
    """Hooks called by `run_experiment`; override the ones you need."""

    def on_begin(self, start_round: int, history: list[dict]) -> None:
        """Before the first round played; ``history`` holds rounds 1..start_round."""

    def on_round_end(self, row: dict, state) -> bool | None:
        """After each round (and its checkpoint); return True to stop the experiment."""

    def on_end(self, state, history: list[dict]) -> None:
        """After the last round played, also when stopped early."""


class EarlyStopping(Callback):
    """Stops when ``metric`` has not improved for ``patience`` rounds that report it.

    Args:
      metric: a row key, e.g. ``'eval/loss'`` or ``'loss'``.
      mode: ``'min'`` or ``'max'``: which direction is an improvement.
      patience: rounds reporting ``metric`` without improvement before stopping.
      min_delta: the least change that counts as an improvement.

    Attributes:
      best: the best value seen; best_round: its round; stopped_round: the
        round it stopped after (None while running).
    """

    def __init__(self, metric: str, *, mode: str = "min", patience: int = 5, min_delta=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max'; received {mode!r}.")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ValueError(f"patience must be a positive int; received {patience!r}.")
        if not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(f"min_delta must be a number >= 0; received {min_delta!r}.")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self._reset()

    def _reset(self) -> None:
        self.best, self.best_round, self.stopped_round, self._waited = None, None, None, 0

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _see(self, row: dict) -> bool:
        value = row.get(self.metric)
        if value is None or isinstance(value, str) or math.isnan(value):
            return False
        if self._improves(value):
            self.best, self.best_round, self._waited = value, row["round"], 0
            return False
        self._waited += 1
        return self._waited >= self.patience

    def on_begin(self, start_round, history):
        self._reset()
        for row in history:
            self._see(row)

    def on_round_end(self, row, state):
        if self._see(row):
            self.stopped_round = row["round"]
            return True
        return None
