"""Mutation audit: does the fast tier (`make test`) still catch the faults we fear?

Each mutation below plants one known-bad change in a copy of the package (one
exact source line, found exactly once) and runs fast-tier tests (`-m "not slow"`)
against the copy; the audit passes when every mutation makes them fail. Run it
after moving tests between tiers or deleting tests:

    .venv/bin/python tests/mutation_audit.py            # the test files named per mutation
    .venv/bin/python tests/mutation_audit.py --all      # the whole fast tier per mutation

Not collected by pytest (no ``test_`` prefix): it runs pytest itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutation(NamedTuple):
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in `path`
    mutated: str
    tests: tuple[str, ...]  # fast-tier test files expected to catch it


MUTATIONS = (
    Mutation(
        "FedProx proximal sign",
        "fedjax_keras/algorithms/_fed_prox.py",
        "g + mu * (w - w0)",
        "g - mu * (w - w0)",
        ("tests/algorithms/test_algorithms.py",),
    ),
    Mutation(
        "padding mask ignored in the loss",
        "fedjax_keras/models/_losses.py",
        "jnp.sum(jnp.where(element_mask > 0, values * element_mask, 0.0))",
        "jnp.sum(values)",
        ("tests/models/test_models_keras_equivalence.py", "tests/client/test_local_update.py"),
    ),
    Mutation(
        "client weighting by examples dropped",
        "fedjax_keras/algorithms/_weighting.py",
        "        return num_examples.astype(jnp.float32)\n",
        "        return jnp.where(num_examples > 0, 1.0, 0.0)\n",
        ("tests/algorithms/test_algorithms.py",),
    ),
    Mutation(
        "non-finite clients kept",
        "fedjax_keras/engine/_round.py",
        "    return all_true(jnp.stack(flags, axis=1))",
        "    return jnp.ones((num_clients,), bool)",
        ("tests/algorithms/test_algorithms.py", "tests/engine/test_process.py"),
    ),
    Mutation(
        "padded steps advance the optimizer state",
        "fedjax_keras/models/_model.py",
        "tree_where(has_examples, new_state, optimizer_state)",
        "new_state",
        ("tests/client/test_local_update.py",),
    ),
    Mutation(
        "a dropped client's persistent state is written",
        "fedjax_keras/engine/_round.py",
        "info.write & keep",
        "info.write",
        ("tests/parallel/test_executors.py",),
    ),
    Mutation(
        "SCAFFOLD's N off by one",
        "fedjax_keras/algorithms/_scaffold.py",
        "c + s / population",
        "c + s / (population + 1)",
        ("tests/algorithms/test_algorithms.py",),
    ),
    Mutation(
        "host batching gathers the wrong rows",
        "fedjax_keras/data/_batching.py",
        "index_of_slot = self._index_of_slot[s0:s1]",
        "index_of_slot = self._index_of_slot[s0:s1][::-1]",
        ("tests/data/test_batching.py",),
    ),
)


def _copy_tree(destination: Path) -> None:
    """The tracked and untracked (not ignored) files of the checkout, into `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _apply(tree: Path, mutation: Mutation) -> None:
    path = tree / mutation.path
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        raise SystemExit(
            f"mutation {mutation.name!r}: expected {mutation.original!r} exactly once in "
            f"{mutation.path}, found it {count} times; update tests/mutation_audit.py."
        )
    path.write_text(text.replace(mutation.original, mutation.mutated))


def _run_fast_tier(tree: Path, files: tuple[str, ...], workers: int) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-m",
        "not slow",
        "-p",
        "no:cacheprovider",
    ]
    if workers > 1:
        command += ["-n", str(workers)]
    done = subprocess.run(command + list(files), cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else done.stderr[-300:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="run the whole fast tier per mutation")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default="", help="only the mutations whose name contains this")
    args = parser.parse_args(argv)
    survived, chosen = [], []
    with tempfile.TemporaryDirectory(prefix="fk-mutation-") as scratch:
        chosen = [m for m in MUTATIONS if args.only in m.name]
        for mutation in chosen:
            tree = Path(scratch) / "tree"
            shutil.rmtree(tree, ignore_errors=True)
            _copy_tree(tree)
            _apply(tree, mutation)
            start = time.perf_counter()
            status, summary = _run_fast_tier(
                tree, ("tests",) if args.all else mutation.tests, args.workers
            )
            caught = status not in (0, 5)
            print(
                f"{'CAUGHT' if caught else 'SURVIVED'}  {mutation.name}  "
                f"({time.perf_counter() - start:.0f} s: {summary})",
                flush=True,
            )
            if not caught:
                survived.append(mutation.name)
    if survived:
        print(f"{len(survived)} mutation(s) survived the fast tier: {', '.join(survived)}")
        return 1
    print(f"all {len(chosen)} mutations fail the fast tier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
