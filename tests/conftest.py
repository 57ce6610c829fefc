"""Test-wide setup.

Keras fixes its backend at first import, and test modules import keras before
fedjax_keras (which would otherwise pick JAX), so choose it here.
"""

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# The CLI turns on JAX's persistent compilation cache for its whole process; the
# tests run it in-process, and a program loaded from disk is not compiled, which
# the compile-counting tests would see. tests/test_compile_cache.py tests the cache.
os.environ.setdefault("FEDJAX_KERAS_COMPILE_CACHE", "0")


_SLOW_LEFT_OUT = pytest.StashKey[int]()


def _leaves_out_slow(config) -> bool:
    return "not slow" in (config.getoption("markexpr") or "")


@pytest.hookimpl(tryfirst=True)  # before -m deselects them
def pytest_collection_modifyitems(config, items):
    if _leaves_out_slow(config):
        count = sum(1 for item in items if item.get_closest_marker("slow"))
        config.stash[_SLOW_LEFT_OUT] = count
        if hasattr(config, "workeroutput"):  # a pytest-xdist worker: tell the controller
            config.workeroutput["slow_left_out"] = count


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    count = getattr(node, "workeroutput", {}).get("slow_left_out")
    if count is not None:  # every worker collects every test: the counts agree
        node.config.stash[_SLOW_LEFT_OUT] = count


def pytest_terminal_summary(terminalreporter, config):
    """Says how many slow tests the fast tier (`make test`) left out."""
    if _leaves_out_slow(config) and _SLOW_LEFT_OUT in config.stash:
        terminalreporter.write_line(
            f"make test left out {config.stash[_SLOW_LEFT_OUT]} slow tests (processes, "
            "CLI end to end, large models); make test-all runs them"
        )
