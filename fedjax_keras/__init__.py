"""fedjax_keras: fast federated-learning simulation for Keras 3 models on JAX."""

# Keras fixes its backend at its first import: fedjax_keras.models chooses JAX
# (unless the user chose) before it, or a user's later `import keras`, loads keras.
# XLA reads XLA_FLAGS when JAX starts its first backend: tune XLA:CPU before that
# (see _xla_tuning.py).
from fedjax_keras import _xla_tuning
from fedjax_keras import models as models

_xla_tuning.tune_xla_cpu()

from fedjax_keras import aggregation as aggregation
from fedjax_keras import algorithms as algorithms
from fedjax_keras import checkpoint as checkpoint
from fedjax_keras import client as client
from fedjax_keras import data as data
from fedjax_keras import engine as engine
from fedjax_keras import errors as errors
from fedjax_keras import metrics as metrics
from fedjax_keras import optimizers as optimizers
from fedjax_keras import parallel as parallel
from fedjax_keras import privacy as privacy
from fedjax_keras import testing as testing
from fedjax_keras import training as training
from fedjax_keras.data import FederatedData as FederatedData
from fedjax_keras.engine import sweep as sweep
from fedjax_keras.models import BatchOutput as BatchOutput
from fedjax_keras.models import Model as Model
from fedjax_keras.models import ModelWeights as ModelWeights
from fedjax_keras.models import from_keras_model as from_keras_model

__version__ = "0.1.0"
