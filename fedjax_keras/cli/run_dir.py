"""The run directory: resolved config, per-round metrics (JSONL, CSV), curves, checkpoints.

One job: everything a run writes, and the one-line errors when it cannot
(the ``--tensorboard`` copy of the rows included), so the writers share one
error path.

Layout::

    <run_dir>/config.yaml      the resolved configuration (what ``--resume`` reads)
    <run_dir>/metrics.jsonl    one JSON object per round, appended as rounds finish
    <run_dir>/metrics.csv      the same rows as a table, rewritten after every round
    <run_dir>/curves.png       loss and accuracy against rounds (train and eval)
    <run_dir>/checkpoints/<round>/   orbax checkpoints of the whole process state
    <run_dir>/corrupt_checkpoints/<round>/   checkpoints ``--resume`` skipped as corrupt
    <run_dir>/.lock            locked by the run under way; holds its pid and host

A sweep (``--seeds``, or lists of learning rates) writes config.yaml and the
checkpoints (of all runs' stacked state) at the top, ``sweep.png`` (every
run's curves, their mean and min-max band) instead of curves.png, and the
metrics of run k in ``<run_dir>/run_<k>/`` (``run_00``, ``run_01``, ...), each
row with the run's ``seed``, ``client_lr`` and ``server_lr``.

A directory that cannot be created or written (read-only, below a regular
file, on a full disk) is a `UsageError` naming the file and the reason.

One process at a time: a run (new or resumed) holds an exclusive lock on
``<run_dir>/.lock`` (``flock``; the file holds its pid) until it exits, and a
second ``simulate`` on the same directory is refused in one line naming the
holder. The kernel drops the lock of a process that dies, even by SIGKILL, so
a crashed run never leaves a stale lock behind. The file itself stays: removing
it would let two processes lock two different files of one name.
"""

import contextlib
import csv
import errno
import json
import os
import shutil
import socket

from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli._errors import UsageError

COLUMNS = (
    "round",
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "num_clients",
    "num_examples",
    "num_dropped_clients",
    "round_seconds",
    "clients_per_second",
    "examples_per_second",
    "elapsed_seconds",
)
# A sweep's runs also record their own settings in every row.
SWEEP_COLUMNS = COLUMNS + ("seed", "client_lr", "server_lr")


def free_bytes(path: str) -> int | None:
    """Free space on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def format_bytes(count: int | None) -> str:
    if count is None:
        return "an unknown amount"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"  # pragma: no cover


def os_error_reason(error: OSError, path: str) -> str:
    """``error`` in a few words; for a full disk, with the free space left."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += f"; {format_bytes(free_bytes(path))} free"
    return reason


@contextlib.contextmanager
def writing(path: str, action: str = "write", flag: str = "--run-dir"):
    """Turns an OSError while writing ``path`` into a one-line `UsageError` naming ``flag``."""
    try:
        yield
    except OSError as error:
        raise UsageError(
            f"{flag}: cannot {action} {path!r} ({os_error_reason(error, path)}); "
            "expected a writable directory with free space."
        ) from None


LOCK_NAME = ".lock"


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the open file ``fd``; False if another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_run_directory(path: str) -> int:
    """Takes ``<path>/.lock`` for this process, for as long as it runs; returns its fd.

    Raises:
      UsageError: another process holds it; the message names its pid and host.
    """
    lock_path = os.path.join(path, LOCK_NAME)
    with writing(path, "create"):
        os.makedirs(path, exist_ok=True)
    with writing(lock_path, "create"):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        os.close(fd)
        raise UsageError(
            f"--run-dir: {path!r} is in use by another run ({holder or 'a process'}); "
            "wait for it to finish (or stop it), or choose another directory."
        )
    with writing(lock_path):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


class RunDir:
    """Writes one run's files; `rows` holds the metrics written so far."""

    def __init__(self, path: str, columns: tuple[str, ...] = COLUMNS):
        self.path = path
        self.columns = columns
        self.config_path = os.path.join(path, "config.yaml")
        self.jsonl_path = os.path.join(path, "metrics.jsonl")
        self.csv_path = os.path.join(path, "metrics.csv")
        self.plot_path = os.path.join(path, "curves.png")
        self.checkpoints = os.path.join(path, "checkpoints")
        self.rows: list[dict] = []
        self.lock_fd: int | None = None  # held open for the run's lifetime (`lock_run_directory`)
        self.board = None  # a fedjax_keras.training.TensorBoard (--tensorboard), or None

    @classmethod
    def create(cls, path: str) -> "RunDir":
        """A new run directory, locked for this process; refuses one that holds a run."""
        run = cls(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"--run-dir: {path!r} is a file; expected a directory.")
        # Lock first: a second process started at the same moment finds no
        # config.yaml yet, but it cannot take the lock.
        run.lock_fd = lock_run_directory(path)
        if os.path.exists(run.config_path):
            raise UsageError(
                f"--run-dir: {path!r} already holds a run; pass --resume to continue it, "
                "or choose a new directory."
            )
        with writing(path, "create"):
            os.makedirs(run.checkpoints, exist_ok=True)
        return run

    @classmethod
    def sweep_member(cls, path: str) -> "RunDir":
        """The folder of one run of a sweep: its metrics only (no config, no checkpoints)."""
        run = cls(path, SWEEP_COLUMNS)
        with writing(path, "create"):
            os.makedirs(path, exist_ok=True)
        return run

    @classmethod
    def open_existing(cls, path: str) -> "RunDir":
        """The run directory of a run to resume."""
        run = cls(path)
        if not os.path.exists(run.config_path):
            raise UsageError(
                f"--resume: {path!r} holds no run (no config.yaml); expected the --run-dir "
                "of an earlier run."
            )
        run.lock_fd = lock_run_directory(path)
        with writing(run.checkpoints, "create"):
            os.makedirs(run.checkpoints, exist_ok=True)
        return run

    def log_to_tensorboard(self, log_dir: str) -> None:
        """Also writes every row as TensorBoard scalars under ``log_dir`` (``--tensorboard``)."""
        from fedjax_keras.training import TensorBoard

        try:
            board = TensorBoard(log_dir)
        except ImportError:
            raise UsageError(
                "--tensorboard needs tensorboardX: pip install fedjax_keras[tensorboard]."
            ) from None
        with writing(log_dir, "create", "--tensorboard"):
            os.makedirs(log_dir, exist_ok=True)
        self.board = board

    def release(self) -> None:
        """Drops the directory's lock (at the end of the run; exiting drops it too)."""
        if self.board is not None:
            self.board.on_end(None, self.rows)
            self.board = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def write_config(self, config) -> None:
        """Writes the resolved configuration to config.yaml (what ``--resume`` reads)."""
        tmp = self.config_path + ".tmp"
        with writing(self.config_path):
            config_lib.write_yaml(config, tmp)
            os.replace(tmp, self.config_path)

    def set_aside_checkpoints_after(self, round_num: int) -> str | None:
        """Moves the checkpoints of rounds after ``round_num`` to ``corrupt_checkpoints/``.

        ``--resume`` restored ``round_num`` because the newer ones are corrupt;
        moved aside, they stay for inspection and the resumed run can write
        those rounds again. Returns the folder, or None when nothing moved.
        """
        newer = [
            name
            for name in os.listdir(self.checkpoints)
            if name.isascii() and name.isdigit() and int(name) > round_num
        ]
        if not newer:
            return None
        folder = os.path.join(self.path, "corrupt_checkpoints")
        with writing(folder, "create"):
            os.makedirs(folder, exist_ok=True)
            for name in newer:
                target, copy = os.path.join(folder, name), 1
                while os.path.exists(target):
                    target, copy = os.path.join(folder, f"{name}-{copy}"), copy + 1
                os.replace(os.path.join(self.checkpoints, name), target)
        return folder

    def load_rows(self, up_to_round: int) -> None:
        """Keeps the logged rows of rounds <= ``up_to_round`` (a killed run may have
        logged rounds after its last checkpoint; the resumed run redoes them)."""
        rows = []
        if os.path.exists(self.jsonl_path):
            with open(self.jsonl_path) as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut short by the kill
                    if row.get("round", 0) <= up_to_round:
                        rows.append(row)
        # One row per round: the first (a file written by two processes at once,
        # before runs took the directory's lock, holds every round twice).
        by_round = {}
        for row in rows:
            by_round.setdefault(row.get("round"), row)
        self.rows = list(by_round.values())
        self._rewrite()
        if self.board is not None:  # the rounds after up_to_round are purged there too
            with writing(self.board.log_dir, flag="--tensorboard"):
                self.board.on_begin(up_to_round, self.rows)

    def append(self, row: dict) -> None:
        """Records the metrics of one round, after the rounds already recorded."""
        if self.rows and row["round"] <= self.rows[-1]["round"]:
            raise UsageError(
                f"--run-dir: {self.jsonl_path!r} already holds round {row['round']}; "
                "expected each round once (did another process write to this directory?)."
            )
        self.rows.append(row)
        with writing(self.jsonl_path), open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        if self.board is not None:
            with writing(self.board.log_dir, flag="--tensorboard"):
                self.board.on_round_end(row, None)

    def _rewrite(self) -> None:
        tmp = self.jsonl_path + ".tmp"
        with writing(self.jsonl_path):
            with open(tmp, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in self.rows)
            os.replace(tmp, self.jsonl_path)
        self._write_csv()

    def _write_csv(self) -> None:
        tmp = self.csv_path + ".tmp"
        with writing(self.csv_path):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                for row in self.rows:
                    writer.writerow(
                        {k: ("" if row.get(k) is None else row.get(k)) for k in self.columns}
                    )
            os.replace(tmp, self.csv_path)

    def plot(self, title: str) -> None:
        """Writes curves.png: loss and accuracy against rounds, train and eval."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for split, style in (("train", "-"), ("eval", "o-")):
                points = [
                    (row["round"], row[f"{split}_{metric}"])
                    for row in self.rows
                    if row.get(f"{split}_{metric}") is not None
                ]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, label=split, markersize=3)
            ax.set_xlabel("round")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # no rounds logged: no curve to name
                ax.legend()
        fig.suptitle(title)
        _save_figure(fig, self.plot_path)


def plot_sweep(path: str, runs: list, labels: list[str], title: str) -> None:
    """Writes a sweep's plot: train loss and eval accuracy against rounds.

    One thin line per run (``runs[k]`` its rows, ``labels[k]`` its legend),
    their mean as a thick line and the band between their min and max.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("train_loss", "eval_accuracy")):
        style = "o-" if metric.startswith("eval") else "-"
        curves = []
        for rows, label in zip(runs, labels):
            points = {row["round"]: row[metric] for row in rows if row.get(metric) is not None}
            if points:
                xs, ys = list(points), list(points.values())
                ax.plot(xs, ys, style, lw=1, ms=3, alpha=0.6, label=label)
            curves.append(points)
        # The mean and band over the rounds every run logged (all of them, in a sweep).
        common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if common:
            values = np.array([[c[r] for r in common] for c in curves])
            ax.plot(common, values.mean(0), style, color="black", lw=2, ms=3, label="mean")
            ax.fill_between(common, values.min(0), values.max(0), color="gray", alpha=0.25)
        ax.set_xlabel("round")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"{title} (band: min to max over {len(runs)} runs)")
    _save_figure(fig, path)


def _save_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path + ".tmp.png"
    try:
        with writing(path):
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, path)
    finally:
        plt.close(fig)
