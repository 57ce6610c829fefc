"""Runs the fedjax-keras command under injected faults; the subprocess of tests/cli/test_faults.py.

    python tests/fault_driver.py WORKDIR SEED

It imports fedjax_keras once, then runs each step of each scenario in a forked
child: a process of its own for signals and exit statuses (SIGKILL ends only
the child), without paying for the imports again. A step injects its faults at
named points of the command (a wrapper around the function that runs there),
runs ``main(argv)`` and exits with its status. Scenarios chain steps on one run
directory (each step resumes the run the previous one left), and every chain
ends with a step that runs to the last round, so its final checkpoint must
equal, bit for bit, that of the uninterrupted ``reference`` run.

As root, one more child runs on a small tmpfs that fills up at the second
checkpoint (the real orbax/tensorstore failure, not an injected one). Two more
children send 60 SIGINTs each at random moments of a loop that runs
JAX's garbage-collection callback, with `StopRequest` and with Python's
default handler, and count the interrupts lost.

The parent runs no JAX computation (XLA's threads do not survive a fork); the
last child hashes every scenario's final checkpoint. WORKDIR/results.json
gets, per step, the exit status and stderr; the race counts; and, per
scenario, the SHA-256 of the final state's arrays.
"""

import contextlib
import errno
import functools
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity

import fedjax_keras  # noqa: F401 (JAX backend before keras)
import fedjax_keras.checkpoint._integrity as integrity
import fedjax_keras.cli.tasks as cli_tasks
from fedjax_keras.algorithms import FederatedProcess
from fedjax_keras.cli.main import main

ROUNDS = 12
BASE = [
    "simulate",
    "--task",
    "synthetic",
    "--num-clients",
    "12",
    "--client-size",
    "15",
    "--algorithm",
    "scaffold",
    "--client-lr",
    "0.05",
    "--cohort-size",
    "4",
    "--rounds",
    str(ROUNDS),
    "--checkpoint-every",
    "2",
    "--eval-every",
    "3",
    "--runner",
    "vmap",
    "--chunk-size",
    "none",
    "--no-progress",
]
# Where a fault can be injected: the function that runs at that point.
POINTS = {
    "setup": (cli_tasks, "load_task"),  # before the first round
    "round": (FederatedProcess, "next"),  # a round (training or evaluation) starts
    "eval": (FederatedProcess, "set_model_weights"),  # an evaluation starts
    "orbax_commit": (atomicity.AtomicRenameTemporaryPath, "finalize"),  # written, not renamed
    "orbax_meta": (ocp.handlers.JsonCheckpointHandler, "async_save"),  # arrays written
    "manifest": (integrity, "_write_manifest"),  # committed, manifest not yet written
}


def _signal(signum):
    def act():
        os.kill(os.getpid(), signum)

    return act


def _disk_full():
    raise OSError(errno.ENOSPC, "No space left on device")


ACTIONS = {"kill": _signal(signal.SIGKILL), "int": _signal(signal.SIGINT), "enospc": _disk_full}


def _install(point: str, nth: int, action: str, delay: float = 0.0) -> None:
    """Runs ``action`` when ``point`` is reached the ``nth`` time (after ``delay`` s)."""
    owner, name = POINTS[point]
    original = getattr(owner, name)
    calls = itertools.count(1)
    act = ACTIONS[action]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if next(calls) == nth:
            if delay:
                threading.Timer(delay, act).start()
            else:
                act()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _child(argv, faults, stderr_path) -> None:
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    status = 3
    try:
        for fault in faults:
            _install(*fault)
        status = main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _fork(argv, faults, stderr_path, timeout=120.0) -> int:
    """Runs one step in a child; its exit status (-N when signal N ended it)."""
    pid = os.fork()
    if pid == 0:
        _child(argv, faults, stderr_path)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 999  # hung
        time.sleep(0.02)


def _truncate_newest(run_dir: str) -> str:
    """Cuts the largest file of the newest checkpoint to 10 bytes; returns its round."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    newest = max((n for n in os.listdir(checkpoints) if n.isdigit()), key=int)
    step = os.path.join(checkpoints, newest)
    files = [os.path.join(root, n) for root, _, names in os.walk(step) for n in names]
    os.truncate(max((f for f in files if "manifest.json" not in f), key=os.path.getsize), 10)
    return newest


def _scenarios(seed: int) -> dict:
    """Each scenario: a list of steps, each a list of faults (point, nth, action[, delay])."""
    rng = random.Random(seed)
    return {
        "reference": [[]],
        # One run, stopped at a different point by each step, resumed by the next; the
        # comment says where it stands (checkpoints every 2 rounds, evaluation every 3).
        "faults": [
            [("setup", 1, "int")],  # while the task loads: no round runs
            [("round", 3, "kill")],  # in round 3; checkpoint 2 is the newest
            # A few ms into round 3: JAX dispatch, a gc callback, the checkpoint...
            [("round", 1, "int", rng.uniform(0.0, 0.08))],
            [("orbax_commit", 1, "kill")],  # checkpoint written, not renamed: lost
            [("orbax_commit", 1, "int")],  # during a checkpoint: it completes first
            [("manifest", 1, "kill")],  # committed, no manifest: restored unverified
            [("eval", 1, "int")],  # during an evaluation
            [("orbax_meta", 1, "enospc")],  # the disk fills up during a checkpoint
            "truncate_newest",  # the newest checkpoint is cut: --resume falls back
            [("round", 1, "int"), ("orbax_commit", 1, "int")],  # twice: stop at once
            [],  # to the last round
        ],
    }


RACE_TRIES = 60


def _race(use_stop_request: bool, seed: int) -> dict:
    """SIGINTs at random moments of a loop that runs JAX's gc callback; how many are lost.

    With Python's default handler, a KeyboardInterrupt raised inside JAX's
    ``_xla_gc_callback`` is printed as "Exception ignored" and lost; with
    `StopRequest` every SIGINT must be recorded.
    """
    import gc

    import jax.numpy as jnp

    from fedjax_keras.cli.interrupt import StopRequest

    rng = random.Random(seed)
    arrays = [jnp.zeros(2) for _ in range(10)]  # live JAX arrays, as in a run
    lost = 0
    for _ in range(RACE_TRIES):
        timer = threading.Timer(rng.uniform(0.0, 0.01), os.kill, (os.getpid(), signal.SIGINT))
        seen = False
        try:
            with StopRequest("run") if use_stop_request else contextlib.nullcontext() as stop:
                timer.start()
                end = time.monotonic() + 0.02
                while time.monotonic() < end:  # most of the time inside gc callbacks
                    gc.collect(0)
                timer.join()
                for _ in range(100):  # a signal still pending is handled here
                    gc.collect(0)
                seen = bool(stop and stop.requested)
        except KeyboardInterrupt:
            seen = True
        timer.join()
        lost += not seen
    del arrays
    callbacks = [getattr(callback, "__name__", "") for callback in gc.callbacks]
    return {"tries": RACE_TRIES, "lost": lost, "gc_callback": "_xla_gc_callback" in callbacks}


def _final_hashes(workdir: str, names) -> dict:
    """SHA-256 of each run's final state arrays (in a child: it runs JAX)."""
    import hashlib

    import jax
    import numpy as np

    from fedjax_keras.checkpoint import restore_newest
    from fedjax_keras.cli import config as config_lib
    from fedjax_keras.cli.experiment import build_model, build_process
    from fedjax_keras.cli.tasks import load_task

    hashes = {}
    for name in names:
        run_dir = os.path.join(workdir, name)
        saved = config_lib.read_config_file(os.path.join(run_dir, "config.yaml"))
        config = config_lib.resolve(saved, {}, {"rounds": ROUNDS})
        task = load_task(config)
        template = build_process(config, build_model(config, task), task).initialize(config.seed)
        state, round_num = restore_newest(os.path.join(run_dir, "checkpoints"), template)
        leaves = jax.tree.leaves(state)  # the client table (SCAFFOLD's c_i) included
        digest = hashlib.sha256()
        for leaf in leaves:
            digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
        hashes[name] = {"round": round_num, "sha256": digest.hexdigest()}
    return hashes


def _in_child(path: str, function, *args) -> dict:
    """``function(*args)`` in a forked child, its JSON result through ``path``
    (its stderr in ``path + '.stderr'``)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.dup2(os.open(path + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            with open(path, "w") as f:
                json.dump(function(*args), f)
            status = 0
        finally:
            os._exit(status)
    os.waitpid(pid, 0)
    with open(path) as f:
        return json.load(f)


def _allocated_bytes(folder: str) -> int:
    return sum(
        os.stat(os.path.join(root, name)).st_blocks * 512
        for root, _, names in os.walk(folder)
        for name in names
    )


def _full_disk(workdir: str) -> dict:
    """A run on a small tmpfs with room for one checkpoint and a half (needs root)."""
    mount = os.path.join(workdir, "small_fs")
    os.makedirs(mount)
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root"}
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        return {"skipped": f"mount failed: {proc.stderr.strip()}"}
    try:
        checkpoints = os.path.join(workdir, "reference", "checkpoints")
        newest = max((n for n in os.listdir(checkpoints) if n.isdigit()), key=int)
        size = _allocated_bytes(os.path.join(checkpoints, newest))
        room = int(1.3 * size) + 24 * 1024  # one checkpoint, the run's small files, no more
        with open(os.path.join(mount, "filler"), "wb") as f:
            f.write(b"\1" * max(0, shutil.disk_usage(mount).free - room))
        run_dir = os.path.join(mount, "run")
        argv = [*BASE, "--run-dir", run_dir, "--rounds", "4", "--checkpoint-every", "1"]
        stderr_path = os.path.join(workdir, "full_disk.stderr")
        status = _fork(argv, [], stderr_path)
        with open(stderr_path) as f:
            stderr = f.read()
        found = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
        return {"status": status, "stderr": stderr, "run_dir": run_dir, "checkpoints": found}
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


def run(workdir: str, seed: int) -> dict:
    results = {"steps": [], "seed": seed, "rounds": ROUNDS}
    for name, steps in _scenarios(seed).items():
        run_dir = os.path.join(workdir, name)
        for index, faults in enumerate(steps):
            record = {"scenario": name, "step": index, "faults": faults, "run_dir": run_dir}
            if faults == "truncate_newest":
                record["truncated_round"] = _truncate_newest(run_dir)
            else:
                argv = (
                    [*BASE, "--run-dir", run_dir]
                    if index == 0
                    else ["simulate", "--resume", "--run-dir", run_dir, "--no-progress"]
                )
                stderr_path = os.path.join(workdir, f"{name}-{index}.stderr")
                tic = time.monotonic()
                record["status"] = _fork(argv, faults, stderr_path)
                record["seconds"] = round(time.monotonic() - tic, 2)
                with open(stderr_path) as f:
                    record["stderr"] = f.read()
            results["steps"].append(record)
    results["full_disk"] = _full_disk(workdir)
    for name, use_stop_request in (("race_stop_request", True), ("race_default", False)):
        path = os.path.join(workdir, f"{name}.json")
        results[name] = _in_child(path, _race, use_stop_request, seed)
    hashes = os.path.join(workdir, "hashes.json")
    results["final"] = _in_child(hashes, _final_hashes, workdir, list(_scenarios(seed)))
    return results


if __name__ == "__main__":
    workdir, seed = sys.argv[1], int(sys.argv[2])
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(run(workdir, seed), f, indent=1)
