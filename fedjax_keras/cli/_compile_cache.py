"""JAX's persistent compilation cache for ``fedjax-keras simulate``.

A run compiles a handful of programs in its first rounds (one per chunk shape
and runner, the server step, evaluation); on a CPU that is most of a short
run's first-round time. JAX can write compiled programs to disk and load them
in a later process that compiles the same program with the same jax, XLA
flags and device (all part of the cache key), so a repeated or resumed run
skips the compilations. The command turns the cache on by default, in
`default_cache_dir`, and lowers JAX's thresholds so that small programs (the
CPU's are often under JAX's default 1 s minimum compile time) are kept too.

``--no-compile-cache`` (config key ``compile_cache: false``) or
``FEDJAX_KERAS_COMPILE_CACHE=0`` in the environment turn it off. A cache
folder the user already chose (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)``) is kept. The folder
grows with every new program; delete it to reclaim the space.

A script gets the same with one line before its first computation::

    jax.config.update("jax_compilation_cache_dir", "/path/to/cache")
"""

import os
import sys

ENV_SWITCH = "FEDJAX_KERAS_COMPILE_CACHE"


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/fedjax_keras/jax_compilation_cache`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fedjax_keras", "jax_compilation_cache")


def _switched_off_in_environment() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off")


def configure_compile_cache(enabled: bool) -> str | None:
    """Turns JAX's persistent compilation cache on (or off) for this process.

    Args:
      enabled: the ``compile_cache`` setting.

    Returns:
      The cache folder in use, or None when the cache is off.
    """
    import jax

    if not enabled or _switched_off_in_environment():
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = jax.config.jax_compilation_cache_dir or default_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        print(
            f"fedjax-keras: note: no compilation cache ({error}); pass --no-compile-cache to "
            "silence this.",
            file=sys.stderr,
        )
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
