"""XLA:CPU settings applied at ``import fedjax_keras``: convolutions off YNNPACK.

jax 0.10's XLA:CPU hands convolutions to YNNPACK fusions, which run slowly on
the CPUs we measured: a jitted SGD step of Protocol A's CNN took 2x as long,
and a vmap over 4 clients 7.5x (benchmarks/NOTES.md). The empty value of
``--xla_cpu_experimental_ynn_fusion_type`` turns those fusions off.

XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend (the first
computation, not ``import jax``), so the flag is added to the environment
before that, and only

- when ``FEDJAX_KERAS_XLA_TUNING`` is not ``0`` / ``false`` / ``no`` / ``off``;
- when the user's ``XLA_FLAGS`` does not already set the flag (any value);
- when the backend will be the CPU: ``JAX_PLATFORMS`` names ``cpu`` first,
  or is unset and no GPU/TPU plugin is installed;
- when jaxlib is one it was measured to help (`YNN_TUNED_JAXLIB` in
  `fedjax_keras._jax_version`: 0.10; not 0.12, where XLA:CPU's defaults are as
  fast or faster); XLA also aborts the process on a flag it does not know, and
  this one is experimental.

If a backend has already started, it is too late: nothing changes, and a
warning says how to get the fast path (import fedjax_keras before running any
JAX computation, or set ``XLA_FLAGS`` yourself).

The flag is written to ``os.environ``, so subprocesses inherit it; a
subprocess running another jaxlib (one that lacks the flag) must remove it.
"""

import importlib.util
import os
import sys
import warnings
from importlib import metadata

from fedjax_keras import _jax_version
from fedjax_keras.errors import XlaTuningWarning

OPT_OUT_ENV = "FEDJAX_KERAS_XLA_TUNING"
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# What is appended to XLA_FLAGS: the fusion types, none.
YNN_OFF = YNN_FLAG + "="

# What the last `tune_xla_cpu` call did (for tests and debugging).
status = "not run"


def opted_out() -> bool:
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "false", "no", "off")


def user_set_flag(xla_flags: str) -> bool:
    """Whether ``xla_flags`` (an XLA_FLAGS value) already sets the YNN fusion flag."""
    return any(token == YNN_FLAG or token.startswith(YNN_FLAG + "=") for token in xla_flags.split())


def _accelerator_plugin_installed() -> bool:
    """Whether a GPU/TPU PJRT plugin is installed (found without importing jax)."""
    try:
        if metadata.entry_points(group="jax_plugins"):
            return True
    except Exception:  # noqa: BLE001 - broken metadata must not break the import.
        pass
    for name in ("jax_plugins", "libtpu", "libtpu_nightly"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        if name != "jax_plugins":
            return True
        for path in spec.submodule_search_locations or ():
            if os.path.isdir(path) and any(not e.startswith("_") for e in os.listdir(path)):
                return True
    return False


def backend_will_be_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, judged before it starts."""
    platforms = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
    jax = sys.modules.get("jax")
    if jax is not None:
        platforms = getattr(jax.config, "jax_platforms", None) or platforms
    if platforms.strip():
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not _accelerator_plugin_installed()


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 - a private API; assume the worst.
        return True


def tune_xla_cpu() -> str:
    """Adds ``--xla_cpu_experimental_ynn_fusion_type=`` to ``XLA_FLAGS`` where safe.

    Returns:
      What happened, also kept in the module's ``status``: 'applied',
      'opted out', 'set by user', 'other jaxlib', 'not cpu', or 'too late'
      (a backend had started; a `XlaTuningWarning` was issued if it is the CPU).
    """
    global status
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if opted_out():
        status = "opted out"
    elif user_set_flag(xla_flags):
        status = "set by user"
    elif not _jax_version.in_range(
        _jax_version.installed_version("jaxlib"), _jax_version.YNN_TUNED_JAXLIB
    ):
        status = "other jaxlib"
    elif _backend_started():
        status = "too late"
        import jax

        if jax.default_backend() == "cpu":
            warnings.warn(
                "JAX's backend started before `import fedjax_keras`, so XLA:CPU keeps its "
                "YNNPACK convolution fusions (about 2x slower for convolutional models). Import "
                "fedjax_keras before running any JAX computation, or start Python with "
                f"XLA_FLAGS={YNN_OFF}; set {OPT_OUT_ENV}=0 to silence this warning.",
                XlaTuningWarning,
                stacklevel=3,  # the user's `import fedjax_keras`
            )
    elif not backend_will_be_cpu():
        status = "not cpu"
    else:
        os.environ["XLA_FLAGS"] = f"{xla_flags} {YNN_OFF}".strip()
        status = "applied"
    return status
