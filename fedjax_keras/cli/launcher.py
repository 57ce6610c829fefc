"""``fedjax-keras launch``: local processes of one run, watched together until they end.

The launcher starts one ``python -m fedjax_keras simulate ...`` per process,
with the coordinator's address in the environment, and does not join the run
itself. A process that dies leaves the others waiting in a collective that
never completes: the survivors' own timeout comes minutes later and ends in a
native stack dump. So the launcher polls every process, and when one dies it
stops the others and prints one line naming the process, how it ended and the
command that continues the run from its last checkpoint.
"""

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.interrupt import resume_command
from fedjax_keras.parallel import COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV

_POLL_SECONDS = 0.1
# SIGTERM first: a checkpoint being written when it lands is still in orbax's
# temporary directory, so the newest complete one stays whole. JAX's
# distributed runtime handles SIGTERM as a preemption notice and keeps
# running, hence the SIGKILL after a short wait.
_GRACE_SECONDS = 3.0
_STDERR_TAIL_CHARS = 4000
# A worker that exits 130 was asked to stop (Ctrl-C); the others stop after
# the same round, which they agree on, so the launcher waits for them.
_INTERRUPTED = 130


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port(port: int) -> None:
    """Raises `UsageError` unless ``port`` can be bound on 127.0.0.1 now.

    Otherwise process 0's coordinator fails to bind it and the others wait
    for it for about 40 s before giving up with a gRPC log line.
    """
    with socket.socket() as s:
        # As the coordinator's gRPC server does, so a port an earlier run left
        # in TIME_WAIT is accepted; a socket listening on it still fails.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as error:
            reason = (
                "is already in use"
                if error.errno == errno.EADDRINUSE
                else f"cannot be bound on 127.0.0.1 ({error.strerror})"
            )
            raise UsageError(
                f"launch: --port {port} {reason}; choose another or leave --port out to "
                "pick a free one."
            ) from None


def _launch_resume_command(run_dir: str | None, num_processes: int) -> str:
    """How the line that reports a dead process ends: the command that continues the run."""
    if run_dir is None:
        return "the run directory is not known, so the run cannot be resumed."
    if not os.path.exists(os.path.join(run_dir, "config.yaml")):
        return f"{run_dir} holds no run yet; run the command again to start it."
    simulate = resume_command(run_dir).removeprefix("fedjax-keras ")
    return (
        "continue from the last checkpoint with: "
        f"fedjax-keras launch --num-processes {num_processes} -- {simulate}"
    )


def _how_it_ended(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def _exit_status(status: int) -> int:
    """A `Popen.returncode` as a shell reports it: 128 + the signal for a killed process."""
    return 128 - status if status < 0 else status


def _tail(log) -> str:
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - _STDERR_TAIL_CHARS))
    return log.read().decode(errors="replace")


def _first_failure(procs) -> tuple[int, int] | None:
    """Polls until every process has ended (None) or one failed: ``(process id, returncode)``."""
    while True:
        ended = [(i, proc.poll()) for i, proc in enumerate(procs)]
        failed = [(i, s) for i, s in ended if s not in (None, 0, _INTERRUPTED)]
        if failed:
            # Seen in the same poll, a process killed by a signal is the likelier
            # cause: one that exits with an error status has usually noticed it.
            return min(failed, key=lambda f: (f[1] >= 0, f[0]))
        if all(s is not None for _, s in ended):
            return None
        time.sleep(_POLL_SECONDS)


def _watch(procs) -> tuple[tuple[int, int] | None, bool]:
    """`_first_failure` of ``procs``, and whether Ctrl-C was pressed meanwhile.

    The processes got the Ctrl-C too and stop after the round under way; a
    second one stops them at once.
    """
    interrupted = False
    while True:
        try:
            return _first_failure(procs), interrupted
        except KeyboardInterrupt:
            if interrupted:
                _stop(procs)
                return None, True
            interrupted = True


def _stop(procs) -> None:
    """Stops the processes still running: SIGTERM, then SIGKILL after `_GRACE_SECONDS`."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + _GRACE_SECONDS
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(command: list[str], process_id: int, num_processes: int, port: int, log):
    env = {
        **os.environ,
        COORDINATOR_ENV: f"127.0.0.1:{port}",
        NUM_PROCESSES_ENV: str(num_processes),
        PROCESS_ID_ENV: str(process_id),
    }
    # Process 0's output is the run's; the others' error output is kept in a
    # file (a pipe nobody reads would fill and block the process) and shown
    # only if that process fails.
    return subprocess.Popen(
        [sys.executable, "-m", "fedjax_keras", *command],
        env=env,
        stdout=subprocess.DEVNULL if process_id else None,
        stderr=log,
    )


def launch(
    num_processes: int, command: list[str], port: int | None = None, run_dir: str | None = None
) -> int:
    """Runs ``fedjax-keras <command>`` as ``num_processes`` local processes; their exit status.

    Process 0's output goes to this terminal. When a process dies (a non-zero
    exit status or a signal) the others are stopped within seconds, its error
    output is shown, and the last line on stderr names it, how it ended and
    the command that continues the run in ``run_dir``. Ctrl-C reaches every
    process (they share the terminal's process group): they stop after the
    same round and its checkpoint; a second Ctrl-C stops them at once.

    Args:
      num_processes: processes to start.
      command: the command line after ``fedjax-keras`` (``['simulate', ...]``).
      port: the coordinator's port on 127.0.0.1; None picks a free one.
      run_dir: the run's directory, for the command that resumes it; None if unknown.

    Returns:
      0 when every process succeeded; 130 when Ctrl-C stopped them; else the
      failed process's exit status, 128 + the signal's number if a signal killed it.

    Raises:
      UsageError: ``port`` cannot be bound on 127.0.0.1.
    """
    if port is None:
        port = _free_port()
    else:
        _check_port(port)
    with contextlib.ExitStack() as logs_open:
        logs = [None] + [
            logs_open.enter_context(tempfile.TemporaryFile()) for _ in range(1, num_processes)
        ]
        procs = []
        try:
            for process_id in range(num_processes):
                procs.append(_start(command, process_id, num_processes, port, logs[process_id]))
            failure, interrupted = _watch(procs)
            if failure is None:
                statuses = {proc.returncode for proc in procs}
                return _INTERRUPTED if interrupted or _INTERRUPTED in statuses else 0
            process_id, status = failure
            _stop(procs)
            tail = _tail(logs[process_id]) if process_id else ""  # 0's went to the terminal
            if tail:
                sys.stderr.write(f"[process {process_id}] {tail.rstrip()}\n")
            print(
                f"fedjax-keras: error: process {process_id} of {num_processes} "
                f"{_how_it_ended(status)}; stopped the others; "
                f"{_launch_resume_command(run_dir, num_processes)}",
                file=sys.stderr,
                flush=True,
            )
            return _exit_status(status)
        finally:
            _stop(procs)  # a bug in the launcher itself leaves no process behind
