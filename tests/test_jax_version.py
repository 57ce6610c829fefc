"""The tested jax range: pyproject.toml, `SUPPORTED_JAX` and the installed jax agree."""

import pathlib

import pytest
import tomllib

from fedjax_keras import _jax_version


@pytest.mark.parametrize(
    "version, parsed",
    [("0.10.2", (0, 10, 2)), ("0.10.2.dev20261130", (0, 10, 2)), ("1.0", (1, 0, 0)), ("x", None)],
)
def test_version_tuple(version, parsed):
    assert _jax_version.version_tuple(version) == parsed


@pytest.mark.parametrize(
    "version, inside",
    [("0.10.1", False), ("0.10.2", True), ("0.11.2", True), ("0.12.0.1", True), ("0.13.0", False)],
)
def test_in_range_is_low_inclusive_high_exclusive(version, inside):
    assert _jax_version.in_range(version, _jax_version.SUPPORTED_JAX) is inside
    assert not _jax_version.in_range(None, _jax_version.SUPPORTED_JAX)
    assert not _jax_version.in_range("not-a-version", _jax_version.SUPPORTED_JAX)


def test_pyproject_requires_the_supported_range_and_the_accelerator_extras_too():
    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    low, high = _jax_version.SUPPORTED_JAX
    requirement = f"jax>={low},<{high}"
    jax_requirement = next(d for d in project["dependencies"] if d.startswith("jax"))
    assert jax_requirement.replace(" ", "") == requirement
    extras = project["optional-dependencies"]
    for extra in ("cuda12", "cuda13", "tpu"):
        assert extras[extra] == [f"jax[{extra}]>={low},<{high}"]


def test_the_installed_jax_is_in_the_supported_range():
    installed = _jax_version.installed_version("jax")
    assert _jax_version.in_range(installed, _jax_version.SUPPORTED_JAX), (
        f"jax {installed} is outside SUPPORTED_JAX {_jax_version.SUPPORTED_JAX}"
    )
