"""The jax versions fedjax_keras was measured with, and a warning outside them.

Speed on XLA depends on the exact jax release: jax 0.10 sends convolutions on
XLA:CPU to YNNPACK fusions that run at half speed, and the flag that turns
them off (see `fedjax_keras._xla_tuning`) is experimental and may vanish. The
figures in benchmarks/NOTES.md and the choices of the 'auto' runner hold for
the versions below; pyproject.toml pins jax to them. Widen the range only
after re-running the benchmarks on the new release.
"""

import re
import warnings
from importlib import metadata

from fedjax_keras.errors import UnmeasuredJaxWarning

# Inclusive range of measured jax (and jaxlib) versions.
MEASURED_JAX = ("0.10.2", "0.10.2")

_warned = False


def version_tuple(version: str) -> tuple[int, ...] | None:
    """``'0.10.2'`` -> ``(0, 10, 2)``; pre/dev/local suffixes are ignored; None if unparsable."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


def is_measured(version: str | None) -> bool:
    """Whether ``version`` lies in `MEASURED_JAX` (inclusive)."""
    parsed = None if version is None else version_tuple(version)
    low, high = (version_tuple(v) for v in MEASURED_JAX)
    return parsed is not None and low <= parsed <= high


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` (read from its metadata: nothing is imported)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def measured_range_text() -> str:
    low, high = MEASURED_JAX
    return low if low == high else f"{low} to {high}"


def check_jax_version(version: str | None = None) -> bool:
    """Warns once per process (`UnmeasuredJaxWarning`) if jax is not a measured version.

    Args:
      version: the jax version to check; None reads the installed one.

    Returns:
      True if the version is measured.
    """
    global _warned
    version = installed_version("jax") if version is None else version
    if is_measured(version):
        return True
    if not _warned:
        _warned = True
        warnings.warn(
            f"fedjax_keras was measured with jax {measured_range_text()}, but jax {version} is "
            "in use: training is still correct, but speed may differ from the documented "
            "figures and the XLA:CPU convolution tuning is not applied. Install jax "
            f"{MEASURED_JAX[1]} for the measured behaviour.",
            UnmeasuredJaxWarning,
            stacklevel=3,  # the user's `import fedjax_keras`
        )
    return False
