"""One client's local computation, its keys, and the per-client state table."""

from fedjax_keras.client._local_update import ClientBatchArrays as ClientBatchArrays
from fedjax_keras.client._local_update import ClientOutput as ClientOutput
from fedjax_keras.client._local_update import ClientProgram as ClientProgram
from fedjax_keras.client._local_update import GradCorrection as GradCorrection
from fedjax_keras.client._local_update import TrainCarry as TrainCarry
from fedjax_keras.client._local_update import client_key as client_key
from fedjax_keras.client._local_update import round_key as round_key
from fedjax_keras.client._local_update import start_training as start_training
from fedjax_keras.client._local_update import step_key as step_key
from fedjax_keras.client._local_update import training_step as training_step
from fedjax_keras.client._local_update import with_float_mask as with_float_mask
from fedjax_keras.client._local_update import with_hyperparams as with_hyperparams
from fedjax_keras.client._table import ClientTable as ClientTable
