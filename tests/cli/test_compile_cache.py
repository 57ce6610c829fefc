"""The CLI's persistent compilation cache: on by default, off with --no-compile-cache.

Each run is a fresh ``python -m fedjax_keras`` process with its own cache home,
so the cache really is read back from disk by a second process.
"""

import os
import subprocess
import sys

import pytest

from fedjax_keras.cli import _compile_cache
from fedjax_keras.cli.arguments import parse_command_line as _parse
from fedjax_keras.cli.config import FIXED_ON_RESUME

TINY = [
    "simulate",
    "--task",
    "synthetic",
    "--num-clients",
    "8",
    "--client-size",
    "10",
    "--cohort-size",
    "3",
    "--rounds",
    "1",
    "--no-progress",
]


def _simulate(tmp_path, cache_home, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.pop(_compile_cache.ENV_SWITCH, None)
    env["XDG_CACHE_HOME"] = str(cache_home)
    env["JAX_DEBUG_LOG_MODULES"] = "jax._src.compiler"  # logs each cache hit and miss
    done = subprocess.run(
        [sys.executable, "-m", "fedjax_keras", *TINY, "--run-dir", str(tmp_path / "run"), *extra],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr.count("cache hit"), done.stderr.count("CACHE MISS")


def _entries(cache_home):
    folder = cache_home / "fedjax_keras" / "jax_compilation_cache"
    return sorted(p.name for p in folder.glob("jit_*")) if folder.exists() else []


@pytest.mark.slow
def test_on_by_default_small_programs_included(tmp_path):
    cache_home = tmp_path / "cache"
    hits, misses = _simulate(tmp_path, cache_home)
    entries = _entries(cache_home)
    # Every program of this tiny run compiles in well under JAX's default 1 s
    # threshold; they are kept all the same.
    assert hits == 0 and misses == len(entries) >= 3, (hits, misses, entries)
    hits, misses = _simulate(tmp_path, cache_home, "--run-dir", str(tmp_path / "second"))
    assert (hits, misses) == (len(entries), 0)  # the second process compiled nothing
    assert _entries(cache_home) == entries


@pytest.mark.slow
def test_no_compile_cache_writes_nothing(tmp_path):
    cache_home = tmp_path / "cache"
    hits, misses = _simulate(tmp_path, cache_home, "--no-compile-cache")
    assert (hits, misses) == (0, 0)
    assert _entries(cache_home) == []


def test_flag_and_config_key():
    flags, _, _ = _parse(["simulate", "--no-compile-cache"])
    assert flags == {"compile_cache": False}
    flags, _, _ = _parse(["simulate", "--compile-cache"])
    assert flags == {"compile_cache": True}
    assert "compile_cache" not in FIXED_ON_RESUME  # a resumed run may change it


@pytest.mark.parametrize("xdg, expected_base", [("/x/cache", "/x/cache"), ("", "~/.cache")])
def test_default_cache_dir(monkeypatch, xdg, expected_base):
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    expected = os.path.join(os.path.expanduser(expected_base), "fedjax_keras")
    assert _compile_cache.default_cache_dir() == os.path.join(expected, "jax_compilation_cache")
