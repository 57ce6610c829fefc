"""Test-wide setup.

Keras fixes its backend at first import, and test modules import keras before
fedjax_keras (which would otherwise pick JAX), so choose it here.
"""

import os

import jax
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# The CLI turns on JAX's persistent compilation cache in ~/.cache for its whole
# process; the tests run it in-process and must not write there (the session's
# own cache below is in a temporary folder). tests/cli/test_compile_cache.py tests it.
os.environ.setdefault("FEDJAX_KERAS_COMPILE_CACHE", "0")


# The suite compiles hundreds of small programs that then run for milliseconds,
# and XLA:CPU compiles each fusion of a program as its own LLVM module: compiling
# is most of the suite's time. Two XLA flags halve it (CPU seconds of
# tests/algorithms/test_mime.py and test_pfedme.py: 48.8 default, 35.4 with LLVM at level 0,
# 23.6 with the older elemental emitters too). XLA's own passes (fusion, layout)
# and IEEE arithmetic stay: results differ from the default build's in the last
# float32 bits only (at most 1e-6 in the weights after three rounds of FedAvg with
# Adam on clients and server, toy_models.cnn and mlp, vmap and sequential), which
# every tolerance here allows. Users and benchmarks/ keep XLA's defaults;
# FEDJAX_KERAS_TEST_XLA=default does here too. Flags already in XLA_FLAGS win;
# subprocess tests that set their own XLA_FLAGS do not get these. XLA aborts on a
# flag it does not know, so the emitter flag is given only to the jaxlib it was
# measured on.
def _fast_compile_flags() -> list[str]:
    from importlib import metadata

    flags = ["--xla_backend_optimization_level=0"]
    if metadata.version("jaxlib").startswith("0.10."):
        flags.append("--xla_cpu_use_fusion_emitters=false")
    given = os.environ.get("XLA_FLAGS", "")
    return [flag for flag in flags if flag.split("=")[0] not in given]


if os.environ.get("FEDJAX_KERAS_TEST_XLA") != "default":
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), *_fast_compile_flags()]
    ).strip()


_SLOW_LEFT_OUT = pytest.StashKey[int]()


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache_shared_by_the_run(tmp_path_factory):
    """Turns on JAX's persistent compilation cache in this run's temporary folder.

    Many tests build the same toy model and algorithm, and each new process
    object compiles its programs afresh; with the cache, a program with the same
    HLO is compiled once per run and loaded from disk afterwards, also by the
    other pytest-xdist worker. The folder is new for every run, so nothing
    carries over between runs. `compile_counter.CompileCounter` switches the
    cache off while it counts: a program loaded from disk is not compiled.
    """
    from jax.experimental.compilation_cache import compilation_cache

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # gw0/gw1 share their parent folder
        base = base.parent
    folder = base / "jax_compilation_cache"
    folder.mkdir(exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()  # a computation before now may have settled "no cache"
    yield
    compilation_cache.reset_cache()


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
