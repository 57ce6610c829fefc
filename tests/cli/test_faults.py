"""Faults a run survives, each said in one line: SIGKILL, Ctrl-C, corrupt checkpoints, full disks,
bad configs.

The signal and disk cases run in one subprocess, tests/fault_driver.py, which
forks a child per step (one import of JAX for all) and chains the steps on one
run directory: every fault must leave a run that ``--resume`` continues to the
same final state, bit for bit, as a run that was never disturbed. Bad configs
run in process, through ``main``, under hypothesis.
"""

import json
import os
import re
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedjax_keras.algorithms import algorithm_names
from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli import main
from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.config import CHANGEABLE_ON_RESUME, FIELDS, MAX_INT, MAX_SEED
from fedjax_keras.cli.run_dir import RunDir

DRIVER = Path(__file__).resolve().parents[1] / "fault_driver.py"
EXPECTED_STATUS = {"kill": -9, "int": 130, "enospc": 2}


@pytest.fixture(scope="module")
def driven(tmp_path_factory, request):
    """The driver's results; the XLA compilation cache persists in pytest's cache."""
    workdir = tmp_path_factory.mktemp("faults")
    pytest_cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = pytest_cache.mkdir("fedjax_keras_xla") if pytest_cache else workdir
    seed = int(os.environ.get("FEDJAX_KERAS_FAULT_SEED", time.time_ns() % 10**6))
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "OPENBLAS_NUM_THREADS": "1",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(workdir), str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((workdir / "results.json").read_text())
    results["workdir"] = workdir
    return results


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _expected_status(faults) -> int:
    """A step's exit status: its first fault decides (a second SIGINT also exits 130)."""
    return EXPECTED_STATUS[faults[0][2]] if faults else 0


@pytest.mark.slow
def test_each_fault_ends_as_promised(driven):
    seed = driven["seed"]  # rerun: FEDJAX_KERAS_FAULT_SEED=<seed> pytest tests/cli/test_faults.py
    after_truncate = False
    for step in driven["steps"]:
        where = f"seed {seed}, {step['scenario']} step {step['step']} {step['faults']}"
        if step["faults"] == "truncate_newest":
            after_truncate = True
            continue
        err, lines = step["stderr"], _lines(step["stderr"])
        assert step["status"] == _expected_status(step["faults"]), (where, err)
        assert "Traceback" not in err and "Exception ignored" not in err, (where, err)
        resume = f"fedjax-keras simulate --resume --run-dir {step['run_dir']}"
        if step["status"] == 130:
            assert re.fullmatch(
                rf"fedjax-keras: interrupted[^;]*; continue with: {re.escape(resume)}", lines[-1]
            ), (where, err)
        if step["status"] == 2:
            assert lines[-1].startswith(
                "fedjax-keras: error: --run-dir: no space left for the checkpoint of round "
            ), (where, err)
            assert f"{step['run_dir']}/checkpoints" in lines[-1] and resume in lines[-1]
            assert [line for line in lines if "error" in line] == [lines[-1]], (where, err)
        # The tiny task's clients are smaller than a batch: the padding note is not a fault's.
        warnings = [
            line
            for line in lines
            if line.startswith("fedjax-keras: warning:") and "were padding" not in line
        ]
        if after_truncate:  # the cut checkpoint is named once, then moved aside
            truncated = [s for s in driven["steps"] if "truncated_round" in s][0]
            (warning,) = warnings
            assert f"round {truncated['truncated_round']}" in warning and "is corrupt" in warning
            assert (Path(step["run_dir"]) / "corrupt_checkpoints").is_dir()
            after_truncate = False
        else:  # no fault left a corrupt checkpoint behind
            assert not warnings, (where, err)


@pytest.mark.slow
def test_every_disturbed_run_ends_bit_identical_to_the_undisturbed_one(driven):
    final = driven["final"]
    assert final["reference"]["round"] == driven["rounds"]
    for name, result in final.items():
        assert result == final["reference"], (name, driven["seed"])

    def rows(name):
        text = (driven["workdir"] / name / "metrics.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    keys = ("round", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "num_examples")
    expected = [{k: row[k] for k in keys} for row in rows("reference")]
    assert [{k: row[k] for k in keys} for row in rows("faults")] == expected


@pytest.mark.slow
def test_sigint_is_never_lost_in_jax_gc_callback(driven):
    """60 SIGINTs at random moments of a loop that spends its time in JAX's gc callback."""
    assert driven["race_stop_request"]["lost"] == 0, driven["race_stop_request"]
    default = driven["race_default"]
    if default["gc_callback"]:  # the race this guards against is still there to be lost
        assert default["lost"] > 0, default


@pytest.mark.slow
def test_disk_full_on_a_real_filesystem(driven):
    full = driven.get("full_disk")
    if full is None or full.get("skipped"):
        pytest.skip(f"no small filesystem to fill: {full and full.get('skipped')}")
    lines = _lines(full["stderr"])
    assert full["status"] == 2, full["stderr"]
    assert "Traceback" not in full["stderr"] and "Exception ignored" not in full["stderr"]
    assert re.fullmatch(
        r"fedjax-keras: error: --run-dir: no space left for the checkpoint of round 2 in "
        rf"{re.escape(full['run_dir'])}/checkpoints: it needs about [0-9.]+ KB free, "
        r"[0-9.]+ KB are free; the checkpoint of round 1 is intact\. Free some space, then "
        rf"continue with: fedjax-keras simulate --resume --run-dir {re.escape(full['run_dir'])}",
        lines[-1],
    ), lines
    assert full["checkpoints"] == ["1"]  # the partial round-2 step was removed


# ----------------------------------------------------------------------------- bad configs

TINY = [
    "simulate",
    "--task",
    "synthetic",
    "--num-clients",
    "6",
    "--client-size",
    "8",
    "--cohort-size",
    "2",
    "--no-progress",
]
_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
_WORD = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=10)


def _not_numeric(text: str) -> bool:
    try:
        float(text)
    except (ValueError, OverflowError):
        return True
    return False


_NOT_A_NUMBER = _TEXT.filter(_not_numeric)
_NOT_AN_INT = st.one_of(
    _NOT_A_NUMBER, st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x))
)


def _ints_outside(low: int, high: int):
    return st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1), _NOT_AN_INT)


def _numbers(bad):
    # Hypothesis rewrites a filter like ``x < 0`` into bounds whose open end can yield
    # -0.0, which is not below 0; checking again through a call keeps the predicate exact.
    return st.one_of(
        st.floats(allow_nan=False).filter(bad).filter(lambda x: bad(x)),
        st.sampled_from(["nan", "inf", "-inf"]),
        _NOT_A_NUMBER,
    )


def _a_list_of(kind, text) -> bool:
    """``text`` is a comma-separated list that a list flag accepts (``0.05,0.1``)."""
    if not isinstance(text, str) or "," not in text:
        return False
    try:
        values = [kind(item) for item in text.split(",")]
    except (ValueError, OverflowError):
        return False
    return all(0 <= v < float("inf") for v in values)


_RATE_LISTS = st.sampled_from(["0.1,-1", "0.1,,0.2", "0.1,nan", "0.1,inf", "0.1,x", ","])


def _outside(choices):
    return _TEXT.filter(lambda text: text not in choices)


BAD_VALUES = {
    "task": _outside(("emnist_like", "cifar_like", "synthetic")),
    "task_file": st.tuples(_WORD, st.sampled_from(["", "\x00"])).map(
        lambda t: f"missing_{t[0]}{t[1]}.json"
    ),
    "task_format": _outside(("auto", "tff_h5", "leaf_json")),
    "num_clients": _ints_outside(1, MAX_INT),
    "client_size": _ints_outside(1, MAX_INT),
    "num_classes": _ints_outside(2, MAX_INT),
    "alpha": _numbers(lambda x: x < 0),
    "beta": _numbers(lambda x: x < 0),
    "task_seed": _ints_outside(0, MAX_SEED),
    "test_fraction": _numbers(lambda x: not 0 < x < 1),
    "model": st.one_of(
        _WORD.map(lambda name: f"zz_no_such_{name}"),
        _WORD.map(lambda name: f"zz_no_such_module_{name}:build"),
    ),
    "algorithm": _outside(tuple(algorithm_names())),
    # The default algorithm (FedAvg) takes no options; a pair needs its '='.
    "options": st.one_of(
        _WORD.map(lambda name: f"zz_{name}=1"), _WORD.map(lambda name: f"zz_{name}")
    ),
    # A comma-separated list of rates is a sweep: no bad value may happen to be one.
    "client_lr": st.one_of(
        _numbers(lambda x: not x > 0).filter(lambda v: not _a_list_of(float, v)), _RATE_LISTS
    ),
    "server_lr": st.one_of(
        _numbers(lambda x: not x > 0).filter(lambda v: not _a_list_of(float, v)), _RATE_LISTS
    ),
    "mu": _numbers(lambda x: x < 0),
    "batch_size": _ints_outside(1, MAX_INT),
    "epochs": _ints_outside(1, MAX_INT),
    "rounds": _ints_outside(0, MAX_INT),
    "cohort_size": _ints_outside(1, MAX_INT),
    "chunk_size": _TEXT.filter(lambda t: t not in ("auto", "none") and not t.isdigit()),
    "runner": _outside(("auto", "timed", "vmap", "unroll", "sequential")),
    "seed": _ints_outside(0, MAX_SEED),
    "seeds": st.one_of(
        _ints_outside(0, MAX_SEED).filter(lambda v: not _a_list_of(int, v)),
        st.sampled_from(["0,-1", "0,,1", "0,1.5", f"0,{MAX_SEED + 1}", ",", "0,x"]),
    ),
    "devices": _ints_outside(1, 4096),
    "aggregator": st.one_of(
        _WORD.map(lambda name: f"zz_{name}"),  # no such kind
        _WORD.map(lambda name: f"dp:noise_multiplier=1,zz_{name}=1"),  # no such argument
        st.sampled_from(
            [
                "dp:clip",
                "/median",
                "median/",
                "dp:noise_multiplier=-1",
                "dp_ftrl:noise_multiplier=1",  # no clip
                "dp_ftrl:noise_multiplier=1,clip=1,restart_rounds=0",
            ]
        ),
    ),
    "dropout": _numbers(lambda x: not 0 <= x <= 1),
    "straggler_rate": _numbers(lambda x: not 0 <= x <= 1),
    "straggler_work": _numbers(lambda x: not 0 < x <= 1),
    "eval_every": _ints_outside(1, MAX_INT),
    "checkpoint_every": _ints_outside(1, MAX_INT),
    "keep_checkpoints": _ints_outside(1, MAX_INT),
    # Below a regular file, or (from a config file) holding a NUL.
    "run_dir": st.one_of(_WORD.map(lambda n: f"a_file/{n}"), _WORD.map(lambda n: f"run_\x00{n}")),
    "progress": _TEXT.filter(lambda t: t.lower() not in ("true", "false", "yes", "no", "1", "0")),
    "compile_cache": _TEXT.filter(
        lambda t: t.lower() not in ("true", "false", "yes", "no", "1", "0")
    ),
    "tensorboard": st.one_of(
        _WORD.map(lambda n: f"a_file/{n}"), _WORD.map(lambda n: f"board_\x00{n}")
    ),
}


def test_every_flag_has_bad_values():
    assert sorted(BAD_VALUES) == sorted(FIELDS)


def _bad_yaml():
    keys = st.sampled_from(sorted(FIELDS))
    values = st.one_of(st.integers(-5, 5), st.sampled_from(["synthetic", "fedavg", "0.5"]))
    return st.one_of(
        # A key twice (YAML would keep the last one silently).
        st.tuples(keys, values, values).map(
            lambda t: f"{t[0]}: {t[1]}\nrounds: 0\n{t[0]}: {t[2]}\n"
        ),
        # A syntax error after valid lines.
        st.tuples(
            keys,
            st.sampled_from(
                ["rounds: [1, 2", "a: b: c", "\t- x", "task: 'open", "{a: 1", "]", "- a\nb: c"]
            ),
        ).map(lambda t: f"{t[0]}: 1\n{t[1]}\n"),
        # An unknown key, a list or mapping value, or no mapping at all.
        _WORD.filter(lambda w: w.replace("-", "_") not in FIELDS).map(lambda w: f"{w}: 1\n"),
        keys.map(lambda key: f"{key}: [1, 2]\n"),
        keys.map(lambda key: f"{key}:\n  nested: 1\n"),
        st.sampled_from(["- rounds\n- 1\n", "just text\n", "42\n"]),
    )


def _main_status_and_lines(capsys, args):
    capsys.readouterr()
    status = main(args)
    return status, _lines(capsys.readouterr().err)


def _assert_one_line(status, lines, args, names):
    assert status == 2, (args, lines)
    assert len(lines) == 1 and lines[0].startswith("fedjax-keras: error: "), (args, lines)
    assert names in lines[0], (args, lines[0])


QUICK = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
@QUICK
@given(data=st.data())
def test_bad_flag_values_are_one_line_with_status_2(tmp_path, monkeypatch, capsys, name, data):
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("a regular file")
    value = data.draw(BAD_VALUES[name], label="value")
    flag = "--" + name.replace("_", "-")
    # --rounds 0: a value wrongly accepted ends the run at once (and fails the test).
    args = [*TINY, "--rounds", "0", "--run-dir", "run", f"{flag}={value}"]
    _assert_one_line(*_main_status_and_lines(capsys, args), args, flag)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
@QUICK
@given(data=st.data())
def test_bad_config_values_are_one_line_with_status_2(tmp_path, monkeypatch, capsys, name, data):
    """The same values from a YAML file, where strings may also hold NUL and newlines."""
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("a regular file")
    value = data.draw(BAD_VALUES[name], label="value")
    path = tmp_path / "bad.yaml"
    settings = {"task": "synthetic", "num_clients": 6, "client_size": 8, "cohort_size": 2}
    settings.update({"progress": False, "rounds": 0, "run_dir": "run", name: value})
    path.write_text(yaml.safe_dump(settings))
    args = ["simulate", "--config", str(path)]
    status, lines = _main_status_and_lines(capsys, args)
    # Type errors name the file and its key, range errors the flag of the same name.
    names = "--" + name.replace("_", "-") if f": {name} " not in " ".join(lines) else str(path)
    _assert_one_line(status, lines, args, names)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=_bad_yaml())
def test_bad_yaml_is_one_line_with_status_2(tmp_path, monkeypatch, capsys, text):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    args = [*TINY, "--rounds", "0", "--config", str(path)]
    _assert_one_line(*_main_status_and_lines(capsys, args), args, "--config")


# ------------------------------------------------------- one run per directory, rounds once


def _resume(run_dir, *flags):
    return ["simulate", "--resume", "--run-dir", str(run_dir), "--no-progress", *flags]


def test_a_run_directory_is_held_by_one_run_at_a_time(tmp_path):
    first = RunDir.create(str(tmp_path / "run"))
    with pytest.raises(UsageError, match=rf"in use by another run \(pid {os.getpid()} on "):
        RunDir.create(str(tmp_path / "run"))
    first.write_config(config_lib.resolve({}, {}, {"task": "synthetic"}))
    with pytest.raises(UsageError, match="in use by another run"):
        RunDir.open_existing(str(tmp_path / "run"))  # --resume waits its turn too
    first.release()
    RunDir.open_existing(str(tmp_path / "run")).release()


@pytest.mark.slow
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        "from fedjax_keras.cli.run_dir import RunDir\n"
        "RunDir.create(sys.argv[1])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)], capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    assert "pid" in (run_dir / ".lock").read_text()  # the dead holder's note stays
    RunDir.create(str(run_dir)).release()  # but not its lock


def test_each_round_is_recorded_once(tmp_path):
    run = RunDir.create(str(tmp_path / "run"))
    rows = [{"round": r, "train_loss": 1.0 / r} for r in (1, 2, 3, 1, 2, 3)]
    Path(run.jsonl_path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    run.load_rows(2)  # a file two processes wrote: each round once, in order
    assert [row["round"] for row in run.rows] == [1, 2]
    assert len(Path(run.jsonl_path).read_text().splitlines()) == 2
    with pytest.raises(UsageError, match="already holds round 2"):
        run.append({"round": 2, "train_loss": 0.5})
    run.append({"round": 3, "train_loss": 0.3})
    assert [json.loads(line)["round"] for line in Path(run.jsonl_path).open()] == [1, 2, 3]
    run.release()


def test_resume_with_fewer_rounds_than_done_is_refused_and_changes_nothing(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--rounds", "3", "--run-dir", "run"]) == 0
    config_before = Path("run/config.yaml").read_bytes()
    status, lines = _main_status_and_lines(capsys, _resume("run", "--rounds", "2"))
    _assert_one_line(status, lines, "--rounds 2", "--rounds 2")
    assert "already done 3 rounds" in lines[0] and "--rounds 3 or more" in lines[0]
    assert Path("run/config.yaml").read_bytes() == config_before
    # As many rounds as done: nothing to do, and nothing changes.
    assert main(_resume("run", "--rounds", "3")) == 0
    assert Path("run/config.yaml").read_bytes() == config_before
    assert [json.loads(line)["round"] for line in Path("run/metrics.jsonl").open()] == [1, 2, 3]


def test_the_resume_refusal_names_every_flag_that_may_change(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--rounds", "1", "--run-dir", "run"]) == 0
    status, lines = _main_status_and_lines(capsys, _resume("run", "--seed", "7"))
    _assert_one_line(status, lines, "--seed 7", "--seed")
    for name in CHANGEABLE_ON_RESUME:
        assert "--" + name.replace("_", "-") in lines[0]


@pytest.mark.slow
def test_two_simulations_started_on_one_new_directory(tmp_path):
    """One runs to the end, the other is refused in one line; every round is logged once."""
    args = [*TINY, "--rounds", "4", "--run-dir", str(tmp_path / "run")]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fedjax_keras", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    statuses = sorted(status for status, _ in results)
    assert statuses == [0, 2], results
    refused = next(err for status, err in results if status == 2)
    lines = _lines(refused)
    assert len(lines) == 1 and lines[0].startswith("fedjax-keras: error: --run-dir:"), refused
    # Started together, the second finds the directory locked (or, if the first
    # was already done, holding a run); it never writes.
    assert "in use by another run (pid" in lines[0] or "already holds a run" in lines[0]
    rounds = [json.loads(line)["round"] for line in (tmp_path / "run/metrics.jsonl").open()]
    assert rounds == [1, 2, 3, 4]
