"""What mixed precision (Keras ``mixed_bfloat16``) costs or saves per round, here.

Protocol A's CNN (EMNIST-like 28x28x1, 62 classes) built twice, under the
``float32`` and the ``mixed_bfloat16`` dtype policy, trained with FedAvg on
the same synthetic clients; prints the median round time of each and their
ratio. On an accelerator with bf16 units the mixed policy should pay; on a CPU
without them XLA emulates bf16 arithmetic (converting around float32 math).

Usage: python benchmarks/mixed_precision.py [--rounds 6] [--clients 10]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fedjax_keras as fk  # noqa: E402


def _model(policy: str):
    from protocols import emnist_cnn

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        net = emnist_cnn()
    finally:
        keras.config.set_dtype_policy(previous)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = np.full(args.clients, 40)
    x = rng.random((int(sizes.sum()), 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 62, int(sizes.sum())).astype(np.int32)
    data = fk.data.FederatedData.from_arrays(x, y, np.concatenate([[0], np.cumsum(sizes)]))
    print(f"backend {jax.default_backend()}, {args.clients} clients x 40 examples, batch 20")
    medians = {}
    for policy in ("float32", "mixed_bfloat16"):
        net = _model(policy)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model = fk.from_keras_model(net, {"x": x[:2], "y": y[:2]}, loss=loss)
        process = fk.algorithms.build_weighted_fed_avg(
            model, optax.sgd(0.05), batch_size=20, shuffle=False
        )
        state, times = process.initialize(0), []
        for _ in range(args.rounds):
            tic = time.perf_counter()
            out = process.next(state, data)
            jax.block_until_ready(out.state.model)
            state = out.state
            times.append(time.perf_counter() - tic)
        medians[policy] = statistics.median(times[1:])  # round 0 compiles
        print(f"{policy:>15}: {1000 * medians[policy]:.0f} ms per round (runner {process.mode})")
    ratio = medians["mixed_bfloat16"] / medians["float32"]
    print(f"mixed_bfloat16 / float32: {ratio:.2f}x the round time")


if __name__ == "__main__":
    main()
