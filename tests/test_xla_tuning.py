"""The XLA:CPU tuning applied at import: each case in a fresh interpreter.

XLA reads XLA_FLAGS once per process, so every test starts its own Python.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fedjax_keras import _jax_version, _xla_tuning

FLAG = "--xla_cpu_experimental_ynn_fusion_type="

MEASURED = _jax_version.in_range(
    _jax_version.installed_version("jaxlib"), _jax_version.YNN_TUNED_JAXLIB
)
needs_measured_jaxlib = pytest.mark.skipif(
    not MEASURED, reason="the tuning applies to the jaxlib versions it was measured to help only"
)

# Reports XLA_FLAGS after the import, what the tuning did, the warnings raised,
# and whether a compiled convolution gradient still uses YNNPACK fusions.
PROBE = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        if "start_backend_first" in sys.argv:
            import jax.numpy
            jax.numpy.zeros(1).block_until_ready()
        import fedjax_keras
        from fedjax_keras import _xla_tuning
    import jax, jax.numpy as jnp

    def loss(w, x):
        return jnp.sum(jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(
        jnp.ones((3, 3, 1, 32)), jnp.ones((2, 28, 28, 1))).compile().as_text()
    print(json.dumps({
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "status": _xla_tuning.status,
        "warnings": [w.category.__name__ for w in caught],
        "ynn": "ynn" in compiled.lower(),
    }))
    """
)


def _probe(*args, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _xla_tuning.OPT_OUT_ENV)}
    env["JAX_PLATFORMS"] = "cpu"
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_measured_jaxlib
def test_import_adds_the_flag_and_convolutions_leave_ynnpack():
    out = _probe()
    assert out["xla_flags"] == FLAG
    assert out["status"] == "applied"
    assert not out["ynn"]
    assert out["warnings"] == []


@pytest.mark.slow
@needs_measured_jaxlib
def test_the_users_own_xla_flags_are_kept():
    out = _probe(XLA_FLAGS="--xla_cpu_enable_fast_math=false")
    assert out["xla_flags"].split() == ["--xla_cpu_enable_fast_math=false", FLAG]
    assert out["status"] == "applied"


@pytest.mark.slow
@needs_measured_jaxlib
def test_a_value_the_user_chose_is_left_alone():
    chosen = "--xla_cpu_experimental_ynn_fusion_type=invalid"
    # Only read, never run: an invalid value would fail at compile time.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, fedjax_keras; from fedjax_keras import _xla_tuning; "
            "print(os.environ['XLA_FLAGS'], _xla_tuning.status, sep='|')",
        ],
        env={**os.environ, "XLA_FLAGS": chosen, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == f"{chosen}|set by user"


@pytest.mark.slow
@needs_measured_jaxlib
@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_opt_out(value):
    out = _probe(**{_xla_tuning.OPT_OUT_ENV: value})
    assert out["xla_flags"] is None
    assert out["status"] == "opted out"
    assert out["ynn"]  # jax 0.10's default: convolutions go to YNNPACK


@pytest.mark.slow
@needs_measured_jaxlib
def test_too_late_after_the_backend_started_says_so_once():
    out = _probe("start_backend_first")
    assert out["status"] == "too late"
    assert out["xla_flags"] is None
    assert out["warnings"] == ["XlaTuningWarning"]
    assert out["ynn"]


def test_not_applied_when_the_backend_will_not_be_the_cpu(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(_xla_tuning.OPT_OUT_ENV, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    monkeypatch.setattr(_xla_tuning, "_backend_started", lambda: False)
    monkeypatch.setattr(_jax_version, "installed_version", lambda package: "0.10.2")
    assert _xla_tuning.backend_will_be_cpu() is False
    assert _xla_tuning.tune_xla_cpu() == "not cpu"
    assert "XLA_FLAGS" not in os.environ


def test_not_applied_on_a_jaxlib_without_the_flag(monkeypatch):
    """XLA aborts on flags it does not know: never add it to another jaxlib."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(_xla_tuning.OPT_OUT_ENV, raising=False)
    monkeypatch.setattr(_jax_version, "installed_version", lambda package: "0.5.3")
    assert _xla_tuning.tune_xla_cpu() == "other jaxlib"
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("", False),
        ("--xla_cpu_experimental_ynn_fusion_type=", True),
        ("--a=1 --xla_cpu_experimental_ynn_fusion_type=dot", True),
        ("--xla_cpu_experimental_ynn_fusion_type_other=1", False),
    ],
)
def test_user_set_flag(flags, expected):
    assert _xla_tuning.user_set_flag(flags) is expected
