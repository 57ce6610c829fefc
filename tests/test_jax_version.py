"""The warning for jax versions fedjax_keras has not been measured with."""

import pathlib
import subprocess
import sys
import warnings

import pytest
import tomllib

from fedjax_keras import _jax_version, errors


@pytest.fixture(autouse=True)
def _fresh_warning_state(monkeypatch):
    monkeypatch.setattr(_jax_version, "_warned", False)


@pytest.mark.parametrize(
    "version, parsed",
    [("0.10.2", (0, 10, 2)), ("0.10.2.dev20261130", (0, 10, 2)), ("1.0", (1, 0, 0)), ("x", None)],
)
def test_version_tuple(version, parsed):
    assert _jax_version.version_tuple(version) == parsed


def test_a_measured_version_does_not_warn():
    low, high = _jax_version.MEASURED_JAX
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _jax_version.check_jax_version(low)
        assert _jax_version.check_jax_version(high)


@pytest.mark.parametrize("version", ["0.4.30", "0.10.1", "0.11.0", "1.0.0", "not-a-version"])
def test_an_unmeasured_version_warns_once_naming_both(version):
    with pytest.warns(errors.UnmeasuredJaxWarning) as caught:
        assert not _jax_version.check_jax_version(version)
        assert not _jax_version.check_jax_version("0.0.1")  # no second warning
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"measured with jax {_jax_version.measured_range_text()}" in message
    assert f"jax {version} is in use" in message


@pytest.mark.slow
def test_the_installed_jax_is_measured():
    """pyproject.toml pins jax to the measured range: a fresh install must not warn."""
    installed = _jax_version.installed_version("jax")
    assert _jax_version.is_measured(installed), (
        f"jax {installed} is installed but MEASURED_JAX is {_jax_version.MEASURED_JAX}: "
        "re-run the benchmarks and update MEASURED_JAX and pyproject.toml together."
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", "import fedjax_keras"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_pyproject_pins_the_measured_range():
    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    jax_requirement = next(d for d in dependencies if d.replace(" ", "").startswith("jax"))
    low, high = _jax_version.MEASURED_JAX
    expected = f"jax=={low}" if low == high else f"jax>={low},<={high}"
    assert jax_requirement.replace(" ", "") == expected
