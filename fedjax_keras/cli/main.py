"""``fedjax-keras``: the entry point, and the dispatch to ``simulate`` or ``launch``.

``main`` turns every user mistake (a `UsageError`) into one line on stderr and
exit status 2, and every warning into one line; a bug still shows its
traceback. Ctrl-C stops the run after the round under way and its checkpoint,
with status 130 (see `fedjax_keras.cli.interrupt`).

The parts: the arguments (`fedjax_keras.cli.arguments`), the command line
merged with a resumed run's settings (`fedjax_keras.cli.resume`), one run's
round loop (`fedjax_keras.cli.single_run`) and a sweep's (`fedjax_keras.cli.sweep`).
"""

import logging
import sys
import warnings

from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli import distributed, launcher
from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.arguments import LaunchCommand, parse_command_line
from fedjax_keras.cli.arguments import build_parser as build_parser
from fedjax_keras.cli.interrupt import StopRequest
from fedjax_keras.cli.resume import resolve_command_line
from fedjax_keras.cli.single_run import run_single


def _launch(args: dict) -> int:
    rest = list(args["rest"])
    if rest and rest[0] == "--":
        rest = rest[1:]
    count = config_lib.coerce_int_flag("--num-processes", args["num_processes"], 1, 64)
    port = args.get("port")
    port = None if port is None else config_lib.coerce_int_flag("--port", port, 1, 65535)
    if not rest or rest[0] != "simulate":
        raise UsageError(
            "launch: expected the command after '--', e.g. fedjax-keras launch "
            "--num-processes 2 -- simulate --task synthetic."
        )
    flags, _, _ = parse_command_line(
        rest
    )  # a mistake in the command is one line here, not P of them
    if "seeds" in flags or any(isinstance(flags.get(n), tuple) for n in ("client_lr", "server_lr")):
        raise UsageError(
            "launch: a sweep (--seeds, or a list in --client-lr or --server-lr) runs in one "
            "process; run it with fedjax-keras simulate."
        )
    # Every process, and the launcher's line about a process that died, must
    # name the same run directory: a default one is chosen here, once.
    run_dir = resolve_command_line(rest)[0].run_dir
    if "run_dir" not in flags:
        rest += ["--run-dir", run_dir]
    return launcher.launch(count, rest, port, run_dir)


def simulate(config, resume: bool) -> int:
    """Runs (or resumes) the experiment of ``config``; returns the exit status.

    0 when every round ran; 130 when Ctrl-C stopped it (after the round under
    way and its checkpoint). A checkpoint that cannot be written for lack of
    space, or a run directory that cannot be written, is a `UsageError`.
    """
    import jax

    import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
    from fedjax_keras.cli._compile_cache import configure_compile_cache
    from fedjax_keras.cli.run_dir import RunDir

    logging.getLogger("absl").setLevel(logging.ERROR)
    if config.devices is not None:
        # Before the backend starts: N CPU devices when there is no accelerator.
        jax.config.update("jax_num_cpu_devices", config.devices)
    configure_compile_cache(config.compile_cache)
    distributed.join_if_launched()
    if distributed.is_primary():
        run = RunDir.open_existing(config.run_dir) if resume else RunDir.create(config.run_dir)
    distributed.barrier("fedjax_keras_run_dir")
    if not distributed.is_primary():
        run = distributed.NullRun(config.run_dir)
    try:
        with StopRequest(run.path) as stop:
            if config_lib.sweep_size(config) is not None:
                from fedjax_keras.cli.sweep import run_sweep

                return run_sweep(config, resume, run, stop)
            return run_single(config, resume, run, stop)
    finally:
        run.release()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like the errors."""
    text = " ".join(str(message).split())
    print(f"fedjax-keras: warning: {text}", file=sys.stderr)


def main(argv=None) -> int:
    """The ``fedjax-keras`` entry point; returns the exit status.

    A `UsageError` (and running out of host memory, which a too-large task or
    batch causes) prints one line and exits 2; Ctrl-C exits 130 with the
    command that resumes the run; a bug still shows its traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            try:
                config, resume = resolve_command_line(argv)
            except LaunchCommand as launch:
                return _launch(launch.options)
            return simulate(config, resume)
        except UsageError as error:
            message = " ".join(str(error).split())
            print(f"fedjax-keras: error: {message}", file=sys.stderr)
            return 2
        except MemoryError as error:
            print(
                f"fedjax-keras: error: out of memory ({' '.join(str(error).split())}); "
                "reduce --num-clients, --client-size, --num-classes, --batch-size or "
                "--cohort-size.",
                file=sys.stderr,
            )
            return 2
        except KeyboardInterrupt:  # before the run's handler was installed
            print("fedjax-keras: interrupted before the run started.", file=sys.stderr)
            return 130


def main_exit() -> None:
    """The console script: ``sys.exit(main())``."""
    sys.exit(main())
