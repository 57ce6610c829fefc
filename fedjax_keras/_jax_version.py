"""The jax versions fedjax_keras is tested with, and reading installed versions.

pyproject.toml requires jax in `SUPPORTED_JAX` (low inclusive, high
exclusive); .ci/run runs the suite on both ends: jax 0.10.2 under Python 3.11
and the newest release under Python 3.12. Nothing in the numerics depends on
the version. The XLA:CPU tuning (`fedjax_keras._xla_tuning`) applies only to
the jaxlib versions in `YNN_TUNED_JAXLIB`: where it was measured to help
(benchmarks/NOTES.md: on 0.12 it does not), and where XLA knows the flag (XLA
aborts the process on a flag it does not know).
"""

import re
from importlib import metadata

# pip enforces this range at install time (pyproject.toml); a test checks they agree.
SUPPORTED_JAX = ("0.10.2", "0.13")
# jaxlib versions (low inclusive, high exclusive) that get
# --xla_cpu_experimental_ynn_fusion_type= : 0.10, where it made Protocol A's CNN
# 1.2-3x faster. 0.12 knows the flag, but there it was 0.76-0.96x on the
# host-driven steps (one idle run, 2026-12-03); 0.11 was not measured.
YNN_TUNED_JAXLIB = ("0.10.0", "0.11")


def version_tuple(version: str) -> tuple[int, ...] | None:
    """``'0.10.2'`` -> ``(0, 10, 2)``; pre/dev/local suffixes are ignored; None if unparsable."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


def in_range(version: str | None, bounds: tuple[str, str]) -> bool:
    """Whether ``version`` lies in ``bounds`` (low inclusive, high exclusive)."""
    parsed = None if version is None else version_tuple(version)
    low, high = (version_tuple(v) for v in bounds)
    return parsed is not None and low <= parsed < high


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` (read from its metadata: nothing is imported)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
