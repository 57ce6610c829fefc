"""Robust aggregation under attack: test accuracy of FedAvg after N rounds, aggregator x attack.

The task is a synthetic blob classification (Gaussian classes, softmax
regression); a fraction of the population is Byzantine
(`fedjax_keras.aggregation.attacked`, fixed per client) and sends its update
sign-flipped and scaled, scaled, or replaced by Gaussian noise. Prints a
Markdown table (the one in docs/robustness.md) plus the machine and versions.

    python benchmarks/robustness.py            # the docs' table
    python benchmarks/robustness.py --rounds 5 # quicker
"""

import argparse
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # keras fixes its backend at its first import

import jax
import keras
import numpy as np
import optax

import fedjax_keras as fk

FEATURES, CLASSES = 10, 5
AGGREGATORS = {
    "mean": lambda: fk.aggregation.mean(),
    "median": lambda: fk.aggregation.median(),
    "trimmed_mean(0.2)": lambda: fk.aggregation.trimmed_mean(0.2),
    "trimmed_mean(0.3)": lambda: fk.aggregation.trimmed_mean(0.3),
    "krum(f=4, m=5)": lambda: fk.aggregation.krum(num_byzantine=4, num_selected=5),
}
ATTACKS = {
    "none": None,
    "sign_flip x10": ("sign_flip", 10.0),
    "scale x10": ("scale", 10.0),
    "gaussian sd 1": ("gaussian", 1.0),
}


def blobs(num_clients: int, per_client: int, seed: int):
    """IID clients of a Gaussian-blob task, and a test set: (FederatedData, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32) * 1.2

    def draw(n):
        y = rng.integers(0, CLASSES, n).astype(np.int32)
        x = (means[y] + rng.normal(size=(n, FEATURES))).astype(np.float32)
        return x, y

    x, y = draw(num_clients * per_client)
    offsets = np.arange(num_clients + 1) * per_client
    x_test, y_test = draw(2000)
    return fk.FederatedData.from_arrays(x, y, offsets), x_test, y_test


def softmax_regression(data):
    net = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.Zeros()),
        ]
    )
    return fk.from_keras_model(
        net,
        data.client(0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


def accuracy_after(aggregator, attack, *, rounds, cohort, fraction, data, x_test, y_test, seed):
    """(test accuracy after ``rounds`` rounds of FedAvg, mean fraction of Byzantine clients)."""
    model = softmax_regression(data)
    if attack is not None:
        kind, scale = attack
        aggregator = fk.aggregation.attacked(aggregator, fraction, kind, scale)
    process = fk.algorithms.build_weighted_fed_avg(
        model, optax.sgd(0.1), aggregator=aggregator, batch_size=10, chunk_size=cohort
    )
    state, byzantine = process.initialize(seed), []
    for r in range(rounds):
        out = process.next(state, data.sample_clients(cohort, seed=1000 * seed + r))
        state = out.state
        byzantine.append(out.metrics.get("attack/malicious_fraction", 0.0))
    logits = model.apply(process.get_model_weights(state), x_test)
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == y_test)), np.mean(byzantine)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=100, help="population")
    parser.add_argument("--cohort", type=int, default=20, help="clients per round")
    parser.add_argument("--fraction", type=float, default=0.2, help="Byzantine fraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data, x_test, y_test = blobs(args.clients, 20, args.seed)
    print(
        f"# {platform.processor() or platform.machine()}, {jax.default_backend()}, "
        f"jax {jax.__version__}, keras {keras.__version__}; {args.clients} clients of 20 "
        f"examples, {args.cohort} per round, {args.rounds} rounds, "
        f"{args.fraction:.0%} Byzantine (fixed per client), seed {args.seed}"
    )
    print("| aggregator | " + " | ".join(ATTACKS) + " |")
    print("|---|" + "---|" * len(ATTACKS))
    start, byzantine = time.perf_counter(), []
    for name, make in AGGREGATORS.items():
        results = [
            accuracy_after(
                make(),
                attack,
                rounds=args.rounds,
                cohort=args.cohort,
                fraction=args.fraction,
                data=data,
                x_test=x_test,
                y_test=y_test,
                seed=args.seed,
            )
            for attack in ATTACKS.values()
        ]
        byzantine += [fraction for _, fraction in results[1:]]
        print(f"| `{name}` | " + " | ".join(f"{a:.1%}" for a, _ in results) + " |", flush=True)
    print(
        f"# Byzantine clients per cohort: {np.mean(byzantine):.1%} on average; "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
