"""fedjax_keras is right on whatever backend jax has: a GPU, a TPU, or the CPU.

Run on an accelerator (``bash .gpu/run.sh`` runs it there; see DEVELOPERS.md):
Protocol D's CNN (CIFAR-like 32x32x3, 10 classes) on 16 synthetic clients. On
a CPU (the test suite runs it, tests/test_gpu_check.py): a tiny CNN on 8x8x3
inputs, so that it takes seconds. The checks, one line each, PASS or FAIL:

- executors: three FedAvg rounds under the vmap executor, the stepwise
  executor (``runner='sequential'``) and a plain per-client Keras loop
  (``train_on_batch`` with SGD, the same batches) end at the same weights.
  Convolutions and matmuls run at float32 precision
  (``jax.default_matmul_precision('highest')``: no TF32 on a GPU), and the
  three may differ by float32 rounding only: ``rtol=1e-4, atol=1e-5``.
- auto: ``runner='auto'`` picks the vmap executor for a convolutional model on
  an accelerator (on a CPU it times the host-driven executors instead, the
  documented rule: it must pick one of those).
- sweep: a 4-run ``fk.sweep`` (2 seeds x 2 client learning rates) equals the 4
  runs made one at a time (same tolerance).
- no recompilation: on clients of one size (every round has the same shapes),
  rounds 3 and 4 of the vmap process compile nothing. (With sizes that vary,
  a round whose cohort needs a step bucket not seen before compiles once for
  it, by design.)
- to_keras: the trained weights written into a fresh Keras model predict what
  the wrapped model predicts (same tolerance), and wrapping that Keras model
  again gives back the same weights exactly.

Exit status 0 only if every check passes.

Usage:
  python benchmarks/gpu_check.py [--size tiny|protocol]   (default: protocol on an
                                                          accelerator, tiny on a CPU)
"""

import argparse
import os
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
from fedjax_keras.algorithms import FederatedProcess, fed_avg  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
ROUNDS = 3
CLIENT_LR = 0.05
SEEDS, SWEEP_LRS = (0, 1), (0.03, 0.06)


class Size:
    """A check's shapes: the model, the clients, the batch."""

    def __init__(self, name, make_model, input_shape, clients, client_size, batch, cohort):
        self.name, self.make_model, self.input_shape = name, make_model, input_shape
        self.clients, self.client_size, self.batch, self.cohort = (
            clients,
            client_size,
            batch,
            cohort,
        )


def _tiny_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def _protocol_d_cnn():
    from protocols import cifar_cnn

    return cifar_cnn()


SIZES = {
    "tiny": Size("tiny CNN, 8x8x3", _tiny_cnn, (8, 8, 3), 8, 7, 3, 4),
    "protocol": Size("Protocol D's CNN, 32x32x3", _protocol_d_cnn, (32, 32, 3), 16, 50, 20, 8),
}


def _population(size: Size, seed: int = 0, equal_sizes: bool = False):
    rng = np.random.default_rng(seed)
    # Client sizes vary, so partial last batches and padded steps are exercised.
    sizes = rng.integers(size.client_size // 2, size.client_size + 1, size.clients)
    if equal_sizes:
        sizes[:] = size.client_size
    n = int(sizes.sum())
    x = rng.normal(size=(n, *size.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return fk.data.FederatedData.from_arrays(x, y, offsets), x, y, offsets


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _wrap(net, x, y):
    return fk.from_keras_model(net, {"x": x[:2], "y": y[:2]}, loss=_loss())


def _cohort(data, size: Size, round_num: int):
    return data.sample_clients(size.cohort, seed=[0, round_num])


def _fed_avg_process(model, size: Size, runner: str, lr=CLIENT_LR):
    return FederatedProcess(
        model,
        fed_avg(model, optax.sgd(lr)),
        runner=runner,
        batch_size=size.batch,
        shuffle=False,
        chunk_size=size.cohort,
    )


def _run(process, data, size: Size, rounds: int, seed: int = 0):
    state = process.initialize(seed)
    for r in range(rounds):
        state = process.next(state, _cohort(data, size, r)).state
    return state


def _keras_loop(net, data, size: Size, rounds: int):
    """FedAvg by hand: each client's ``train_on_batch`` in order, the example-weighted mean."""
    net.compile(optimizer=keras.optimizers.SGD(CLIENT_LR), loss=_loss())
    server = [np.asarray(w) for w in net.get_weights()]
    for r in range(rounds):
        cohort = _cohort(data, size, r)
        total, acc = 0, [np.zeros_like(w, dtype=np.float64) for w in server]
        for position in range(cohort.num_clients):
            client = cohort.client(position)
            net.set_weights(server)
            n = len(client["y"])
            for start in range(0, n, size.batch):
                net.train_on_batch(
                    client["x"][start : start + size.batch], client["y"][start : start + size.batch]
                )
            for a, w in zip(acc, net.get_weights()):
                a += n * np.asarray(w, np.float64)
            total += n
        server = [(a / total).astype(np.float32) for a in acc]
    return server


def _close(a, b) -> tuple[bool, float]:
    worst = 0.0
    ok = True
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        excess = np.abs(u - v) - (ATOL + RTOL * np.abs(v))
        worst = max(worst, float(np.max(np.abs(u - v))))
        ok = ok and bool(np.all(excess <= 0))
    return ok, worst


def _report(results: list, name: str, ok: bool, detail: str) -> None:
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def check_executors(results, size, data, x, y):
    model = _wrap(size.make_model(), x, y)
    vmap = _run(_fed_avg_process(model, size, "vmap"), data, size, ROUNDS)
    stepwise = _run(_fed_avg_process(model, size, "sequential"), data, size, ROUNDS)
    net = size.make_model()
    net.set_weights(model.to_keras(model.initial_weights).get_weights())
    by_hand = _keras_loop(net, data, size, ROUNDS)
    trained = model.to_keras(vmap.model).get_weights()
    ok_steps, worst_steps = _close(vmap.model.trainable, stepwise.model.trainable)
    ok_keras, worst_keras = _close(trained, by_hand)
    _report(
        results,
        "executors",
        ok_steps and ok_keras,
        f"{ROUNDS} rounds; vmap vs stepwise max |diff| {worst_steps:.2e}, vmap vs the "
        f"per-client Keras loop {worst_keras:.2e} (rtol {RTOL}, atol {ATOL})",
    )
    return model, vmap


def check_auto(results, size, data, model):
    process = _fed_avg_process(model, size, "auto")
    process.next(process.initialize(0), _cohort(data, size, 0))
    backend = jax.default_backend()
    if backend == "cpu":
        ok = process.mode in ("sequential", "unroll")
        wanted = "a host-driven executor (convolutions on a CPU)"
    else:
        ok = process.mode == "vmap"
        wanted = f"vmap (convolutions on {backend})"
    _report(results, "auto", ok, f"picked {process.mode!r}; expected {wanted}")


def check_sweep(results, size, data, model):
    seeds = [s for s in SEEDS for _ in SWEEP_LRS]
    rates = [lr for _ in SEEDS for lr in SWEEP_LRS]

    def build(client, server):
        return FederatedProcess(
            model,
            fed_avg(model, client, server),
            runner="vmap",
            batch_size=size.batch,
            shuffle=False,
            chunk_size=size.cohort,
        )

    sweep = fk.sweep(build, seeds, rates)
    states = sweep.initialize()
    for r in range(ROUNDS):
        states = sweep.next(states, _cohort(data, size, r)).state
    worst, ok = 0.0, True
    for k, (seed, lr) in enumerate(zip(seeds, rates)):
        alone = _run(_fed_avg_process(model, size, "vmap", lr), data, size, ROUNDS, seed)
        run_ok, run_worst = _close(
            sweep.run_state(states, k).model.trainable, alone.model.trainable
        )
        ok, worst = ok and run_ok, max(worst, run_worst)
    _report(results, "sweep", ok, f"4 runs vs 4 separate runs, max |diff| {worst:.2e}")


def check_no_recompilation(results, size, model):
    """Rounds of one shape: any program compiled after the first two is compiled per round."""
    compiles = []
    data, _, _, _ = _population(size, seed=1, equal_sizes=True)

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name", "?"))

    process = _fed_avg_process(model, size, "vmap")
    state = _run(process, data, size, 2)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for r in (2, 3):
            state = process.next(state, _cohort(data, size, r)).state
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    _report(
        results,
        "no recompilation",
        not compiles,
        f"rounds 3-4 compiled {len(compiles)} programs {sorted(set(compiles))[:4]}",
    )


def check_to_keras(results, size, model, trained, x, y):
    net = model.to_keras(trained.model)
    batch = x[: size.batch]
    ours = model.apply(trained.model, batch)
    theirs = net(batch, training=False)
    ok_predict, worst = _close(ours, theirs)
    again = _wrap(net, x, y).initial_weights
    exact = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(trained.model))
    )
    _report(
        results,
        "to_keras",
        ok_predict and exact,
        f"predictions max |diff| {worst:.2e}; wrapped again: "
        f"{'the same weights' if exact else 'different weights'}",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None)
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    size = SIZES[args.size or ("tiny" if backend == "cpu" else "protocol")]
    print(f"backend {backend}: {jax.devices()[0].device_kind}; jax {jax.__version__}; {size.name}")
    began = time.perf_counter()
    results: list = []
    data, x, y, _ = _population(size)
    with jax.default_matmul_precision("highest"):
        model, trained = check_executors(results, size, data, x, y)
        check_auto(results, size, data, model)
        check_sweep(results, size, data, model)
        check_no_recompilation(results, size, model)
        check_to_keras(results, size, model, trained, x, y)
    passed = sum(results)
    print(f"{passed}/{len(results)} checks passed in {time.perf_counter() - began:.1f} s")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
