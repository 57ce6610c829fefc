"""A command line -> the run's `Config`; a resumed run's merged with its saved settings.

A new run without ``--run-dir`` gets ``runs/<task>-<algorithm>-<time>``; a
resumed one (``--resume``) reads ``config.yaml`` from its run directory and
refuses a change to a setting the checkpoints depend on.
"""

import datetime
import os

from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.arguments import parse_command_line


def resolve_command_line(argv) -> tuple[config_lib.Config, bool]:
    """``(Config, resume)`` of a ``simulate`` command line, a resumed run's saved settings merged.

    Precedence, lowest first: the defaults (for a resumed run, its saved
    ``config.yaml``), the ``--config`` file, the flags. A resumed run keeps the
    settings of `config.FIXED_ON_RESUME`.

    Raises:
      LaunchCommand: the command is ``launch``.
      UsageError: a bad flag, file or run directory, or a fixed setting changed on resume.
    """
    flags, config_file, resume = parse_command_line(argv)
    file_settings = config_lib.read_config_file(config_file) if config_file else {}
    if not resume:
        config = config_lib.resolve({}, file_settings, flags)
        if config.run_dir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            config.run_dir = os.path.join(
                "runs", f"{config.task_file and 'file' or config.task}-{config.algorithm}-{stamp}"
            )
        return config, False
    run_dir = flags.get("run_dir") or file_settings.get("run_dir")
    if not run_dir:
        raise UsageError("--resume: expected --run-dir DIR, the directory of the run to continue.")
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(saved_path):
        raise UsageError(
            f"--resume: {run_dir!r} holds no run (no config.yaml); "
            "expected the --run-dir of an earlier run."
        )
    saved = config_lib.read_config_file(saved_path)
    changeable = [f"--{name.replace('_', '-')}" for name in config_lib.CHANGEABLE_ON_RESUME]
    for name, value in {**file_settings, **flags}.items():
        if name in config_lib.FIXED_ON_RESUME and value != saved.get(name):
            raise UsageError(
                f"--{name.replace('_', '-')}: the run in {run_dir} used {saved.get(name)!r}, "
                f"received {value!r}; a resumed run keeps its settings (only "
                f"{', '.join(changeable[:-1])} and {changeable[-1]} may change)."
            )
    return config_lib.resolve(saved, file_settings, {**flags, "run_dir": run_dir}), True
