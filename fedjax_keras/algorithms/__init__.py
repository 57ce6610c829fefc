"""Federated algorithms with TFF's builder names.

FedAvg (weighted, unweighted), FedOpt, FedProx, FedSGD, SCAFFOLD, evaluation.
"""

from fedjax_keras.algorithms._fed_avg import build_unweighted_fed_avg as build_unweighted_fed_avg
from fedjax_keras.algorithms._fed_avg import build_weighted_fed_avg as build_weighted_fed_avg
from fedjax_keras.algorithms._fed_eval import build_fed_eval as build_fed_eval
from fedjax_keras.algorithms._fed_prox import build_fed_prox as build_fed_prox
from fedjax_keras.algorithms._fed_sgd import build_fed_sgd as build_fed_sgd
from fedjax_keras.algorithms._process import FederatedProcess as FederatedProcess
from fedjax_keras.algorithms._process import RoundOutput as RoundOutput
from fedjax_keras.algorithms._process import ServerState as ServerState
from fedjax_keras.algorithms._scaffold import build_scaffold as build_scaffold
