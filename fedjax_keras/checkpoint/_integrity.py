"""Checkpoints that survive faults: verified on restore, older ones as fallback, full disk named.

`save_state` writes a checkpoint with the orbax core (`_orbax.save_state`),
then its manifest ``<round>/fedjax_keras_manifest.json``: the size and SHA-256
of every file of the step. `restore_state` and `restore_newest` check a
checkpoint against its manifest before orbax reads it, so a truncated, deleted
or altered file is named instead of failing deep inside tensorstore (or, for a
cut OCDBT manifest, being read without complaint). Without a round number they
fall back to the newest checkpoint that restores and warn
(`CheckpointSkippedWarning`, one line) about each one skipped. A checkpoint
whose files are whole but do not fit the template state is never skipped: that
stays a `CheckpointMismatchError`, since the older ones were written by the
same process.

A checkpoint without a manifest (written by an older version, or by a run
killed between orbax's commit and the manifest) is read unverified. If it
cannot be read, it is skipped; if it does not fit the template, it is skipped
only when an older checkpoint does fit (a cut file can look like another
model's, but one run writes one model), else the mismatch is raised.

A full disk while saving (``ENOSPC`` from Python, or tensorstore's
``RESOURCE_EXHAUSTED ... No space left on device``) removes the partial step
and raises `CheckpointDiskFullError`, with the space the checkpoint needs and
the space free; the earlier checkpoints are untouched. orbax's worker threads
log each such failure with its traceback: those duplicates are silenced while
a checkpoint is written or read.

This module wraps the save/restore core of `_orbax` and knows nothing of the
state's layout.

Example:
  >>> save_state("/tmp/run/checkpoints", state, 6)  # doctest: +SKIP
  >>> state, round_num = restore_newest("/tmp/run/checkpoints", template)  # doctest: +SKIP
"""

import contextlib
import errno
import gc
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings

import jax
import numpy as np

from fedjax_keras.checkpoint import _orbax
from fedjax_keras.checkpoint._orbax import CheckpointMismatchError

MANIFEST = "fedjax_keras_manifest.json"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How tensorstore (orbax's array writer) words a full disk in its ValueErrors.
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os_error_code='28'")


class CorruptCheckpointError(ValueError):
    """A checkpoint's files are missing, cut short or altered, or orbax cannot read them.

    The message names the round, the directory and the first bad file. It
    happens when a run or a machine died while a file was being copied, or a
    disk lost data; `restore_newest` then falls back to an older checkpoint.
    """


class CheckpointDiskFullError(OSError):
    """The disk filled up while a checkpoint was written.

    The partial checkpoint is removed; the earlier ones are intact. Free at
    least ``needed_bytes`` (about the size of one checkpoint) on the disk of
    ``directory`` and save again (on the command line: ``--resume``).

    Attributes:
      directory: the checkpoints folder.
      round_num: the round whose checkpoint could not be written.
      needed_bytes: about the space one checkpoint takes.
      free_bytes: the space free on that disk after the partial step was removed.
    """

    def __init__(self, directory: str, round_num: int, needed_bytes: int, free_bytes: int):
        self.directory = directory
        self.round_num = round_num
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        super().__init__(
            errno.ENOSPC,
            f"No space left on the device of {directory!r} for the checkpoint of round "
            f"{round_num}: it needs about {needed_bytes} bytes, {free_bytes} are free. The "
            "partial checkpoint was removed; the earlier ones are intact.",
        )

    def __str__(self) -> str:
        return self.strerror


class CheckpointSkippedWarning(UserWarning):
    """A corrupt checkpoint was skipped in favour of an older one (the message says why)."""


def save_state(directory, state, round_num: int, *, max_to_keep: int | None = None) -> str:
    """Writes ``state`` as the checkpoint of ``round_num``, with a manifest to verify it.

    Args:
      directory: the checkpoints folder (created if missing).
      state: a `ServerState`.
      round_num: the step number (rounds completed, usually ``int(state.round_num)``).
      max_to_keep: keep only the newest this many checkpoints; None keeps all.

    Returns:
      The checkpoint's directory.

    Raises:
      CheckpointDiskFullError: the disk filled up; the partial checkpoint is removed.
      TypeError: a client id is not an int, str or tuple of them.
    """
    directory = os.path.abspath(os.fspath(directory))
    with _quiet_orbax():
        try:
            path = _orbax.save_state(directory, state, round_num, max_to_keep=max_to_keep)
            _write_manifest(path)
        except Exception as error:
            # orbax's orphaned asyncio tasks report the same failure when they are
            # collected: collect them now, while their reports are silenced.
            gc.collect()
            if not _is_disk_full(error):
                raise
            _remove_partial(directory, int(round_num))
            raise CheckpointDiskFullError(
                directory, int(round_num), _needed_bytes(directory, state), _free_bytes(directory)
            ) from None
    return path


def restore_newest(directory, template_state) -> tuple:
    """The newest checkpoint under ``directory`` that restores, and its round.

    Checkpoints are tried newest first. Once one restores, a
    `CheckpointSkippedWarning` names each newer one skipped and why.

    Args:
      directory: the folder given to `save_state`.
      template_state: a `ServerState` of the same process (see `restore_state`).

    Returns:
      ``(state, round_num)``.

    Raises:
      FileNotFoundError: no checkpoint under ``directory``.
      CheckpointMismatchError: the newest whole checkpoint does not fit the
        template (or, without manifests, none does).
      CorruptCheckpointError: no checkpoint restores (the message lists why, per round).
    """
    steps = _steps(directory)
    if not steps:
        raise FileNotFoundError(f"No checkpoint under {os.fspath(directory)!r}.")
    skipped = []
    for step in steps:
        try:
            state = _restore_step(directory, template_state, step, explicit=False)
        except CorruptCheckpointError as error:
            skipped.append(error)
            continue
        for error in skipped:
            warnings.warn(
                f"{error} Skipped it; restored round {step} instead.",
                CheckpointSkippedWarning,
                stacklevel=2,
            )
        return state, step
    mismatches = [e.__cause__ for e in skipped if isinstance(e.__cause__, CheckpointMismatchError)]
    if len(mismatches) == len(skipped):  # none fits: another process wrote them all
        raise mismatches[0]
    raise CorruptCheckpointError(
        f"No checkpoint under {os.fspath(directory)!r} restores: "
        + " ".join(str(error) for error in skipped)
    )


def restore_state(directory, template_state, round_num: int | None = None):
    """Reads a verified checkpoint back into the shape of ``template_state``.

    Args:
      directory: the folder given to `save_state`.
      template_state: a `ServerState` of the same process, e.g.
        ``process.initialize(seed)``: it fixes the tree, the array types and,
        for the client-state store, the default row and placement.
      round_num: which checkpoint; None takes the newest that restores (see
        `restore_newest`). An explicit round never falls back.

    Returns:
      The saved `ServerState`, bit for bit.

    Raises:
      FileNotFoundError: no checkpoint (of that round) under ``directory``.
      CheckpointMismatchError: the checkpoint's arrays do not fit the template.
      CorruptCheckpointError: the checkpoint's files are damaged (with
        ``round_num``), or no checkpoint restores (without).
    """
    if round_num is None:
        return restore_newest(directory, template_state)[0]
    return _restore_step(directory, template_state, int(round_num), explicit=True)


def _restore_step(directory, template_state, step: int, *, explicit: bool):
    """One checkpoint, verified when it has a manifest.

    A checkpoint without a manifest that does not fit the template may be cut
    as well as foreign: when falling back (not ``explicit``), it is treated as
    corrupt, and `restore_newest` re-raises the mismatch if no older
    checkpoint fits either.
    """
    where = f"The checkpoint of round {step} in {os.fspath(directory)!r}"
    verified = _verify(os.path.join(os.fspath(directory), str(step)), where)
    try:
        with _quiet_orbax():
            return _orbax.restore_state(directory, template_state, step)
    except CheckpointMismatchError as error:
        if verified or explicit:
            raise
        raise CorruptCheckpointError(f"{where} cannot be read ({error})") from error
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 (whatever orbax raises, the files do not read)
        first = (str(error).strip().splitlines() or [""])[0]
        first = first.split(" See full TensorStore details")[0][:300]  # a repr follows
        raise CorruptCheckpointError(
            f"{where} cannot be read ({type(error).__name__}: {first})."
        ) from error


# ----------------------------------------------------------------------------- manifest


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(step_dir: str) -> list[str]:
    """Paths relative to ``step_dir`` of every file of the step but the manifest."""
    found = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if not rel.startswith(MANIFEST):
                found.append(rel)
    return sorted(found)


def _write_manifest(step_dir: str) -> None:
    files = {}
    for rel in _files(step_dir):
        path = os.path.join(step_dir, rel)
        files[rel] = [os.path.getsize(path), _sha256(path)]
    target = os.path.join(step_dir, MANIFEST)
    with open(target + ".tmp", "w") as f:
        json.dump({"version": 1, "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(target + ".tmp", target)


def _verify(step_dir: str, where: str) -> bool:
    """True when the manifest vouches for every file, False when there is no usable manifest.

    Raises:
      CorruptCheckpointError: a file the manifest lists is missing, of another size
        or of other content.
    """
    try:
        with open(os.path.join(step_dir, MANIFEST)) as f:
            files = json.load(f)["files"]
        entries = [(rel, int(size), str(digest)) for rel, (size, digest) in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # no manifest, or a cut one: the checkpoint itself may be whole
    for rel, size, digest in sorted(entries):
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            raise CorruptCheckpointError(f"{where} is corrupt: file {rel} is missing.")
        actual = os.path.getsize(path)
        if actual != size:
            raise CorruptCheckpointError(
                f"{where} is corrupt: file {rel} has {actual} bytes; it had {size} when written."
            )
        if _sha256(path) != digest:
            raise CorruptCheckpointError(
                f"{where} is corrupt: file {rel} changed since it was written (SHA-256 differs)."
            )
    return True


# ----------------------------------------------------------------------------- faults


def _steps(directory) -> list[int]:
    """The complete checkpoints' rounds, newest first."""
    if not os.path.isdir(directory):
        return []
    manager = _orbax._manager(directory, create=False)
    try:
        return sorted(manager.all_steps(), reverse=True)
    finally:
        manager.close()


@contextlib.contextmanager
def _quiet_orbax():
    """Silences orbax's reports of a failure from its worker threads and asyncio tasks.

    Each failed write is logged with its traceback by every thread and task that
    saw it (absl and asyncio loggers), and a future's clean-up raises "Event loop
    is closed" as an unraisable exception; the failure itself still propagates as
    one exception.
    """
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [logger.level for logger in loggers]
    hook = sys.unraisablehook
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or any exception it chains to is a full disk."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(current) for text in _DISK_FULL_TEXT):
            return True
        pending += [current.__cause__, current.__context__, *getattr(current, "exceptions", ())]
    return False


def _remove_partial(directory: str, round_num: int) -> None:
    """Removes what a failed save of ``round_num`` left: orbax's temporary step directory."""
    for path in glob.glob(
        os.path.join(glob.escape(directory), f"{round_num}.orbax-checkpoint-tmp*")
    ):
        shutil.rmtree(path, ignore_errors=True)
    step_dir = os.path.join(directory, str(round_num))
    with contextlib.suppress(OSError):
        os.remove(os.path.join(step_dir, MANIFEST + ".tmp"))


def _needed_bytes(directory: str, state) -> int:
    """About one checkpoint's size: the newest on disk, or the state's arrays."""
    arrays = sum(int(np.asarray(leaf).nbytes) for leaf in jax.tree.leaves(state))
    steps = _steps(directory)
    on_disk = 0
    if steps:
        step_dir = os.path.join(directory, str(steps[0]))
        for rel in _files(step_dir):
            info = os.stat(os.path.join(step_dir, rel))
            on_disk += max(info.st_size, info.st_blocks * 512)  # small files take a whole block
    return max(arrays, on_disk)


def _free_bytes(directory: str) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0
