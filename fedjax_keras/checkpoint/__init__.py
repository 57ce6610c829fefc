"""Checkpoints of a federated process's whole state (orbax-checkpoint)."""

from fedjax_keras.checkpoint._orbax import CheckpointMismatchError as CheckpointMismatchError
from fedjax_keras.checkpoint._orbax import latest_round as latest_round
from fedjax_keras.checkpoint._orbax import restore_state as restore_state
from fedjax_keras.checkpoint._orbax import save_state as save_state
