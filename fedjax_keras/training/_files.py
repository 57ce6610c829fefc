"""Callbacks that write the rows to files: JSONL, CSV, and a learning-curve PNG.

Each file is rewritten whole from the rows (through a temporary file and a
rename), so a resumed experiment's file holds every round once, the rounds
after its checkpoint dropped.
"""

import csv
import json
import os

from fedjax_keras.training._callbacks import Callback, _is_number


def _replace(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


class _RowsFile(Callback):
    def __init__(self, path):
        self.path = os.fspath(path)
        self.rows: list[dict] = []

    def on_begin(self, start_round, history):
        self.rows = list(history)
        self._write()

    def on_round_end(self, row, state):
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        raise NotImplementedError


class JsonlLogger(_RowsFile):
    """Writes every row as one JSON object per line to ``path``."""

    def _write(self):
        def write(tmp):
            with open(tmp, "w") as f:
                for row in self.rows:
                    f.write(json.dumps(row) + "\n")

        _replace(self.path, write)


class CsvLogger(_RowsFile):
    """Writes the rows as a CSV table to ``path``; columns in order of first appearance."""

    def _write(self):
        columns = list(dict.fromkeys(key for row in self.rows for key in row))

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, columns)
                writer.writeheader()
                writer.writerows(self.rows)

        _replace(self.path, write)


class CurvePlot(Callback):
    """Draws ``metrics`` against rounds to a PNG at ``path`` when the experiment ends.

    Args:
      path: the PNG file.
      metrics: row keys, one panel each; ``'loss'`` draws the train ``loss``
        and, where reported, ``eval/loss`` in one panel.
    """

    def __init__(self, path, metrics=("loss", "accuracy")):
        self.path, self.metrics = os.fspath(path), tuple(metrics)

    def on_end(self, state, history):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(self.metrics), figsize=(5 * len(self.metrics), 4))
        axes = [axes] if len(self.metrics) == 1 else axes
        for ax, metric in zip(axes, self.metrics):
            for key, style in ((metric, "-"), (f"eval/{metric}", "o-")):
                points = [(r["round"], r[key]) for r in history if _is_number(r.get(key))]
                if points:
                    ax.plot(*zip(*points), style, label=key, markersize=3)
            ax.set_xlabel("round")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        try:
            _replace(self.path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        finally:
            plt.close(fig)
