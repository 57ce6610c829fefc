"""The experiment loop for research scripts: `run_experiment` and its callbacks.

Sampling, periodic evaluation, checkpoints with bit-identical resume, and
callbacks for JSONL / CSV metrics, learning-curve PNGs, TensorBoard event files
and early stopping (FedJAX's ``run_federated_experiment``, pfl's callbacks).
"""

from fedjax_keras.training._callbacks import Callback as Callback
from fedjax_keras.training._callbacks import EarlyStopping as EarlyStopping
from fedjax_keras.training._files import CsvLogger as CsvLogger
from fedjax_keras.training._files import CurvePlot as CurvePlot
from fedjax_keras.training._files import JsonlLogger as JsonlLogger
from fedjax_keras.training._loop import run_experiment as run_experiment
from fedjax_keras.training._tensorboard import TensorBoard as TensorBoard
