"""Cold and warm first-round times of ``fedjax-keras simulate`` (the compilation cache).

    python benchmarks/cli_first_round.py                 # default config and Protocol B's
    python benchmarks/cli_first_round.py --repeats 3

Each run is ``python -m fedjax_keras simulate ... --rounds 1`` in a fresh
process, with its own ``XDG_CACHE_HOME``:

  cold      the compilation cache on, empty (a first run on a machine)
  warm      the same cache again (every later run of the same experiment)
  no cache  ``--no-compile-cache``

It reports round 1's ``round_seconds`` (metrics.jsonl: sampling, batching,
compiling and training the round) and the whole process's wall time (imports,
data, evaluation and the checkpoint included). The three kinds alternate
within each repeat, so they see the same machine load.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "default": [],
    "protocol B": ["--config", str(HERE / "cli_protocol_b.yaml")],
}


def run_once(args: list[str], cache_home: Path, work: Path) -> tuple[float, float]:
    run_dir = Path(tempfile.mkdtemp(dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.pop("FEDJAX_KERAS_COMPILE_CACHE", None)
    env["XDG_CACHE_HOME"] = str(cache_home)
    command = [sys.executable, "-m", "fedjax_keras", "simulate", *args]
    command += ["--rounds", "1", "--no-progress", "--run-dir", str(run_dir / "run")]
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=work, check=True, capture_output=True)
    wall = time.perf_counter() - start
    with open(run_dir / "run" / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    return first["round_seconds"], wall


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for repeat in range(args.repeats):
            for name in args.configs:
                cache_home = Path(tempfile.mkdtemp(dir=work))
                for kind, extra in (
                    ("cold", []),
                    ("warm", []),
                    ("no cache", ["--no-compile-cache"]),
                ):
                    round_s, wall = run_once(CONFIGS[name] + extra, cache_home, work)
                    results.setdefault((name, kind), []).append((round_s, wall))
                    print(
                        f"repeat {repeat} {name} {kind}: round 1 {round_s:.2f} s, "
                        f"process {wall:.1f} s",
                        flush=True,
                    )
    print(f"load average after: {os.getloadavg()}", flush=True)
    print("\n| config | cache | round 1 (s, median) | whole process (s, median) |")
    print("|---|---|---|---|")
    for (name, kind), values in results.items():
        round_s = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"| {name} | {kind} | {round_s:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
