"""Federated algorithms: pure factories, and builders with TFF's names over them.

Every algorithm is a factory named after it (`fed_avg`, `fed_prox`, `scaffold`,
`mime`, `ditto`, ...) that returns a `FederatedAlgorithm` for
``FederatedProcess(model, algorithm, **engine_options)`` or `sweep`; the
builders (`build_weighted_fed_avg`, `build_fed_prox`, ...) are one line over
them. FedAvg (weighted, unweighted), FedOpt (FedAdam, FedYogi, FedAdagrad:
`fed_avg` with `adaptive_server_optimizer`), FedProx, FedSGD, SCAFFOLD, Mime,
MimeLite, FedNova, FedDyn, FedBuff, evaluation; personalization (Ditto, APFL,
FedRep/FedPer, Federated Reconstruction, pFedMe, personalization evaluation),
clustering (HypCluster, federated k-means) and fairness (AFL, q-FFL). The engine's names
(`FederatedProcess`, `FederatedAlgorithm`, `ServerState`, `sweep`, ...) are
re-exported here too, where they were first published.
"""

# Registers the built-in algorithms (the CLI's --algorithm names).
from fedjax_keras.algorithms import _catalogue  # noqa: F401, E402
from fedjax_keras.algorithms._agnostic_fed_avg import agnostic_fed_avg as agnostic_fed_avg
from fedjax_keras.algorithms._agnostic_fed_avg import (
    build_agnostic_fed_avg as build_agnostic_fed_avg,
)
from fedjax_keras.algorithms._agnostic_fed_avg import project_simplex as project_simplex
from fedjax_keras.algorithms._apfl import apfl as apfl
from fedjax_keras.algorithms._apfl import build_apfl as build_apfl
from fedjax_keras.algorithms._builder import process_builder as process_builder
from fedjax_keras.algorithms._client_distribution import client_percentiles as client_percentiles
from fedjax_keras.algorithms._ditto import build_ditto as build_ditto
from fedjax_keras.algorithms._ditto import ditto as ditto
from fedjax_keras.algorithms._fed_avg import build_unweighted_fed_avg as build_unweighted_fed_avg
from fedjax_keras.algorithms._fed_avg import build_weighted_fed_avg as build_weighted_fed_avg
from fedjax_keras.algorithms._fed_avg import fed_avg as fed_avg
from fedjax_keras.algorithms._fed_buff import FedBuffState as FedBuffState
from fedjax_keras.algorithms._fed_buff import build_fed_buff as build_fed_buff
from fedjax_keras.algorithms._fed_buff import fed_buff as fed_buff
from fedjax_keras.algorithms._fed_dyn import FedDynState as FedDynState
from fedjax_keras.algorithms._fed_dyn import build_fed_dyn as build_fed_dyn
from fedjax_keras.algorithms._fed_dyn import fed_dyn as fed_dyn
from fedjax_keras.algorithms._fed_eval import build_fed_eval as build_fed_eval
from fedjax_keras.algorithms._fed_eval import fed_eval as fed_eval
from fedjax_keras.algorithms._fed_kmeans import build_fed_kmeans as build_fed_kmeans
from fedjax_keras.algorithms._fed_kmeans import fed_kmeans as fed_kmeans
from fedjax_keras.algorithms._fed_kmeans import kmeans_model as kmeans_model
from fedjax_keras.algorithms._fed_nova import build_fed_nova as build_fed_nova
from fedjax_keras.algorithms._fed_nova import fed_nova as fed_nova
from fedjax_keras.algorithms._fed_opt import adaptive_server_optimizer as adaptive_server_optimizer
from fedjax_keras.algorithms._fed_opt import build_fed_adagrad as build_fed_adagrad
from fedjax_keras.algorithms._fed_opt import build_fed_adam as build_fed_adam
from fedjax_keras.algorithms._fed_opt import build_fed_yogi as build_fed_yogi
from fedjax_keras.algorithms._fed_opt import fed_opt as fed_opt
from fedjax_keras.algorithms._fed_prox import build_fed_prox as build_fed_prox
from fedjax_keras.algorithms._fed_prox import fed_prox as fed_prox
from fedjax_keras.algorithms._fed_prox import proximal_term as proximal_term
from fedjax_keras.algorithms._fed_recon import build_fed_recon as build_fed_recon
from fedjax_keras.algorithms._fed_recon import build_fed_recon_eval as build_fed_recon_eval
from fedjax_keras.algorithms._fed_recon import fed_recon as fed_recon
from fedjax_keras.algorithms._fed_recon import fed_recon_eval as fed_recon_eval
from fedjax_keras.algorithms._fed_rep import build_fed_per as build_fed_per
from fedjax_keras.algorithms._fed_rep import build_fed_rep as build_fed_rep
from fedjax_keras.algorithms._fed_rep import fed_per as fed_per
from fedjax_keras.algorithms._fed_rep import fed_rep as fed_rep
from fedjax_keras.algorithms._fed_rep import split_head as split_head
from fedjax_keras.algorithms._fed_sgd import build_fed_sgd as build_fed_sgd
from fedjax_keras.algorithms._fed_sgd import fed_sgd as fed_sgd
from fedjax_keras.algorithms._hyp_cluster import build_hyp_cluster as build_hyp_cluster
from fedjax_keras.algorithms._hyp_cluster import hyp_cluster as hyp_cluster
from fedjax_keras.algorithms._hyp_cluster import hyp_cluster_models as hyp_cluster_models
from fedjax_keras.algorithms._lora_fed_avg import build_lora_fed_avg as build_lora_fed_avg
from fedjax_keras.algorithms._mime import MimeBroadcast as MimeBroadcast
from fedjax_keras.algorithms._mime import MimeState as MimeState
from fedjax_keras.algorithms._mime import build_mime as build_mime
from fedjax_keras.algorithms._mime import build_mime_lite as build_mime_lite
from fedjax_keras.algorithms._mime import mime as mime
from fedjax_keras.algorithms._mime import mime_lite as mime_lite
from fedjax_keras.algorithms._mime import paper_momentum as paper_momentum
from fedjax_keras.algorithms._personalization_eval import (
    build_personalization_eval as build_personalization_eval,
)
from fedjax_keras.algorithms._personalization_eval import join_train_test as join_train_test
from fedjax_keras.algorithms._personalization_eval import (
    personalization_eval as personalization_eval,
)
from fedjax_keras.algorithms._personalization_eval import (
    personalization_eval_model as personalization_eval_model,
)
from fedjax_keras.algorithms._pfedme import build_pfedme as build_pfedme
from fedjax_keras.algorithms._pfedme import pfedme as pfedme
from fedjax_keras.algorithms._q_ffl import build_q_ffl as build_q_ffl
from fedjax_keras.algorithms._q_ffl import q_ffl as q_ffl
from fedjax_keras.algorithms._registry import AlgorithmEntry as AlgorithmEntry
from fedjax_keras.algorithms._registry import AlgorithmSettings as AlgorithmSettings
from fedjax_keras.algorithms._registry import algorithm_names as algorithm_names
from fedjax_keras.algorithms._registry import get_algorithm as get_algorithm
from fedjax_keras.algorithms._registry import register as register
from fedjax_keras.algorithms._registry import unregister as unregister
from fedjax_keras.algorithms._scaffold import build_scaffold as build_scaffold
from fedjax_keras.algorithms._scaffold import scaffold as scaffold
from fedjax_keras.algorithms._schedules import RoundBroadcast as RoundBroadcast
from fedjax_keras.algorithms._schedules import broadcast_with_round as broadcast_with_round
from fedjax_keras.algorithms._weighting import ClientWeighting as ClientWeighting
from fedjax_keras.engine import Broadcast as Broadcast
from fedjax_keras.engine import EngineOptions as EngineOptions
from fedjax_keras.engine import FederatedAlgorithm as FederatedAlgorithm
from fedjax_keras.engine import FederatedProcess as FederatedProcess
from fedjax_keras.engine import FirstPass as FirstPass
from fedjax_keras.engine import RoundOutput as RoundOutput
from fedjax_keras.engine import ServerState as ServerState
from fedjax_keras.engine import Sweep as Sweep
from fedjax_keras.engine import SweepOutput as SweepOutput
from fedjax_keras.engine import sweep as sweep
