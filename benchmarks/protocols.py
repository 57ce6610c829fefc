"""The workloads of the benchmark protocols (shared/bench/PROTOCOL.md): data, models, settings.

Every system in `run.py` trains the same Keras model on the same clients with
the same hyper-parameters; only the way rounds are executed differs.
"""

import os

# Keras fixes its backend at first import; these benchmarks run it on JAX.
os.environ.setdefault("KERAS_BACKEND", "jax")

import dataclasses
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

DATA_DIR = Path(
    os.environ.get("FEDJAX_KERAS_BENCH_DATA", Path(__file__).resolve().parent.parent / "bench_data")
)


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    data_file: str
    cohort: int
    client_lr: float
    batch_size: int
    make_model: object
    cpu_rounds: int = 5
    accelerator_rounds: int = 5

    def timed_rounds(self) -> int:
        """Rounds timed after the warm-up: D times 50 on an accelerator (PROTOCOL.md)."""
        import jax

        return self.cpu_rounds if jax.default_backend() == "cpu" else self.accelerator_rounds

    replace: bool = False


def emnist_cnn() -> keras.Model:
    """Protocol A's model (the EMNIST CNN of the TFF and FedJAX baselines)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(62),
        ]
    )


def softmax_regression() -> keras.Model:
    """Protocol B's model: Dense(10) logits on 60 features."""
    return keras.Sequential([keras.Input((60,)), keras.layers.Dense(10)])


def cifar_cnn() -> keras.Model:
    """Protocol D's model."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10),
        ]
    )


PROTOCOLS = {
    "A": Protocol("A", "emnist_like.npz", 20, 0.05, 20, emnist_cnn),
    "B": Protocol("B", "synthetic_small.npz", 100, 0.01, 10, softmax_regression),
    "C100": Protocol(
        "C100", "synthetic_small.npz", 100, 0.01, 10, softmax_regression, replace=True
    ),
    "C1000": Protocol(
        "C1000", "synthetic_small.npz", 1000, 0.01, 10, softmax_regression, replace=True
    ),
    "C10000": Protocol(
        "C10000", "synthetic_small.npz", 10000, 0.01, 10, softmax_regression, replace=True
    ),
    "D": Protocol("D", "cifar_like.npz", 50, 0.1, 10, cifar_cnn, accelerator_rounds=50),
}


def shared_bench_file(name: str) -> Path | None:
    """``shared/bench/<name>`` beside the checkout or any folder above it, or None.

    The main checkout sits beside ``shared/``; a git worktree may sit deeper.
    """
    for folder in Path(__file__).resolve().parents[1:]:
        candidate = folder / "shared" / "bench" / name
        if candidate.exists():
            return candidate
    return None


def ensure_data() -> Path:
    """Writes the protocol data with shared/bench/make_workload.py if it is missing.

    Falls back to the package's own generators (identical arrays) when the
    shared script is not beside the checkout.
    """
    wanted = ["emnist_like.npz", "synthetic_small.npz", "cifar_like.npz"]
    if all((DATA_DIR / f).exists() for f in wanted):
        return DATA_DIR
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    script = shared_bench_file("make_workload.py")
    if script is not None:
        subprocess.run([sys.executable, str(script), str(DATA_DIR)], check=True)
    else:
        from fedjax_keras import data

        for name, make in [
            ("emnist_like", data.emnist_like),
            ("synthetic_small", data.synthetic_leaf),
            ("cifar_like", data.cifar_like),
        ]:
            fd = make()
            np.savez(
                DATA_DIR / f"{name}.npz",
                x=fd.examples["x"],
                y=fd.examples["y"],
                client_offsets=fd.client_offsets,
            )
    return DATA_DIR


def load(protocol: Protocol):
    """(x, y, client_offsets) of the protocol's data."""
    arrays = np.load(ensure_data() / protocol.data_file)
    return arrays["x"], arrays["y"], arrays["client_offsets"]


def cohort_positions(protocol: Protocol, round_num: int, population: int) -> np.ndarray:
    """The protocol's sampling: ``default_rng(r).choice(population, cohort, replace=...)``."""
    replace = protocol.replace and protocol.cohort > population
    return np.random.default_rng(round_num).choice(population, protocol.cohort, replace=replace)
