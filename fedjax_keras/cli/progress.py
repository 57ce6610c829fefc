"""The live progress bar and the final summary table (rich)."""

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fedjax_keras.cli._aggregator_spec import epsilon_text


def _fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class RoundProgress:
    """A bar over rounds showing loss, accuracy, clients/s and the ETA.

    Disabled (``enabled=False``), or when stderr is not a terminal, it prints
    one plain line per evaluated round instead, so logs stay readable.
    """

    def __init__(self, total_rounds: int, start_round: int, enabled: bool = True):
        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.enabled = enabled
        self._progress = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]round"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  acc {task.fields[acc]}  "
                    "eval acc {task.fields[eval_acc]}  {task.fields[speed]} clients/s"
                ),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "rounds",
                total=total_rounds,
                completed=start_round,
                loss="-",
                acc="-",
                eval_acc="-",
                speed="-",
            )
            self._progress.start()

    def update(self, row: dict) -> None:
        if self.live:
            self._progress.update(
                self._task,
                completed=row["round"],
                loss=_fmt(row["train_loss"]),
                acc=_fmt(row.get("train_accuracy"), 3),
                eval_acc=_fmt(row.get("eval_accuracy"), 3)
                if row.get("eval_accuracy") is not None
                else self._progress.tasks[0].fields["eval_acc"],
                speed=f"{row['clients_per_second']:.1f}",
            )
        elif self.enabled and row.get("eval_accuracy") is not None:
            print(
                f"round {row['round']}: train loss {_fmt(row['train_loss'])} "
                f"acc {_fmt(row.get('train_accuracy'), 3)} | eval loss {_fmt(row['eval_loss'])} "
                f"acc {_fmt(row['eval_accuracy'], 3)} | {row['clients_per_second']:.1f} clients/s "
                f"| {row['elapsed_seconds']:.1f} s"
                + (f" | epsilon {epsilon_text(row['epsilon'])}" if "epsilon" in row else ""),
                file=sys.stderr,
                flush=True,
            )

    def stop(self) -> None:
        if self.live:
            self._progress.stop()


def print_summary(rows: list[dict], run_dir: str, seconds: float, title: str) -> None:
    """The final table: first and last round, best eval accuracy, time, run directory."""
    console = Console()
    table = Table(title=title)
    private = any("epsilon" in row for row in rows)
    columns = ("", "round", "train loss", "train acc", "eval loss", "eval acc")
    for column in columns + (("epsilon",) if private else ()):
        table.add_column(column, justify="right" if column else "left")

    def add(label, row):
        cells = [
            label,
            str(row["round"]),
            _fmt(row.get("train_loss")),
            _fmt(row.get("train_accuracy"), 3),
            _fmt(row.get("eval_loss")),
            _fmt(row.get("eval_accuracy"), 3),
        ]
        if private:  # (epsilon, delta) spent by the end of that round
            cells.append(epsilon_text(row.get("epsilon")))
        table.add_row(*cells)

    evaluated = [row for row in rows if row.get("eval_accuracy") is not None]
    if rows:
        add("first", rows[0])
        add("last", rows[-1])
    if evaluated:
        add("best eval", max(evaluated, key=lambda row: row["eval_accuracy"]))
    console.print(table)
    if private:
        console.print(
            f"epsilon: user-level (epsilon, delta={rows[-1]['delta']:.3g})-DP spent by that "
            "round (dp-accounting, fixed-size cohorts)."
        )
    speeds = [row["clients_per_second"] for row in rows]
    speed = f", median {sorted(speeds)[len(speeds) // 2]:.1f} clients/s" if speeds else ""
    console.print(
        f"{len(rows)} rounds logged in {seconds:.1f} s this run{speed}. Run directory: {run_dir}"
    )


def print_sweep_summary(
    runs: list[dict], run_rows: list[list[dict]], run_dir: str, seconds: float, title: str
) -> None:
    """A sweep's final table: one row per run (its settings, last loss, last and best accuracy).

    Args:
      runs: each run's ``{'seed', 'client_lr', 'server_lr'}``.
      run_rows: each run's logged rows.
    """
    console = Console()
    table = Table(title=title)
    columns = ("run", "seed", "client lr", "server lr", "train loss", "eval acc", "best eval acc")
    for column in columns:
        table.add_column(column, justify="right")
    last_accuracies = []
    for k, (run, rows) in enumerate(zip(runs, run_rows)):
        evaluated = [row["eval_accuracy"] for row in rows if row.get("eval_accuracy") is not None]
        last = rows[-1] if rows else {}
        if last.get("eval_accuracy") is not None:
            last_accuracies.append(last["eval_accuracy"])
        table.add_row(
            f"run_{k:02d}",
            str(run["seed"]),
            f"{run['client_lr']:g}",
            f"{run['server_lr']:g}",
            _fmt(last.get("train_loss")),
            _fmt(last.get("eval_accuracy"), 3),
            _fmt(max(evaluated) if evaluated else None, 3),
        )
    console.print(table)
    if len(last_accuracies) == len(runs) and runs:
        mean = sum(last_accuracies) / len(runs)
        std = (sum((a - mean) ** 2 for a in last_accuracies) / len(runs)) ** 0.5
        console.print(f"eval acc over the runs: mean {mean:.3f}, std {std:.3f}.")
    rounds = len(run_rows[0]) if run_rows else 0
    console.print(
        f"{rounds} rounds of {len(runs)} runs logged in {seconds:.1f} s this run. "
        f"Run directory: {run_dir} (run k in run_<k>/, the plot in sweep.png)"
    )
