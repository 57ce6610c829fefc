"""Checkpoints of a federated process's whole state (orbax-checkpoint), verified on restore."""

from fedjax_keras.checkpoint._integrity import (
    CheckpointDiskFullError as CheckpointDiskFullError,
)
from fedjax_keras.checkpoint._integrity import (
    CheckpointSkippedWarning as CheckpointSkippedWarning,
)
from fedjax_keras.checkpoint._integrity import CorruptCheckpointError as CorruptCheckpointError
from fedjax_keras.checkpoint._integrity import restore_newest as restore_newest
from fedjax_keras.checkpoint._integrity import restore_state as restore_state
from fedjax_keras.checkpoint._integrity import save_state as save_state
from fedjax_keras.checkpoint._orbax import CheckpointMismatchError as CheckpointMismatchError
from fedjax_keras.checkpoint._orbax import latest_round as latest_round
