"""One client's local computation, the chunk runners, and per-client persistent state."""

from fedjax_keras.client._local_update import ClientBatchArrays as ClientBatchArrays
from fedjax_keras.client._local_update import ClientProgram as ClientProgram
from fedjax_keras.client._local_update import TrainCarry as TrainCarry
from fedjax_keras.client._local_update import client_key as client_key
from fedjax_keras.client._local_update import start_training as start_training
from fedjax_keras.client._local_update import step_key as step_key
from fedjax_keras.client._local_update import training_step as training_step
from fedjax_keras.client._runners import MODES as MODES
from fedjax_keras.client._runners import Chunk as Chunk
from fedjax_keras.client._runners import ChunkRunner as ChunkRunner
from fedjax_keras.client._runners import round_key as round_key
from fedjax_keras.client._state_store import ClientStateStore as ClientStateStore
