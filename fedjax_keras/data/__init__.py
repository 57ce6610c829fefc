"""Federated data: the client container, cohort sampling, and padded batching."""

from ._batching import ChunkRows as ChunkRows
from ._batching import ClientBatches as ClientBatches
from ._batching import CohortPlan as CohortPlan
from ._batching import plan_cohort as plan_cohort
from ._federated_data import FederatedData as FederatedData
from ._loaders import SHAKESPEARE_CHAR_VOCAB as SHAKESPEARE_CHAR_VOCAB
from ._loaders import SHAKESPEARE_VOCAB_SIZE as SHAKESPEARE_VOCAB_SIZE
from ._loaders import emnist_preprocess as emnist_preprocess
from ._loaders import iter_leaf_json_clients as iter_leaf_json_clients
from ._loaders import iter_tff_h5_clients as iter_tff_h5_clients
from ._loaders import load_leaf_json as load_leaf_json
from ._loaders import load_tff_h5 as load_tff_h5
from ._loaders import shakespeare_char_ids as shakespeare_char_ids
from ._loaders import shakespeare_preprocess as shakespeare_preprocess
from ._padding import PaddingBreakdown as PaddingBreakdown
from ._padding import padding_breakdown as padding_breakdown
from ._padding import padding_warning as padding_warning
from ._partition import partition_dirichlet as partition_dirichlet
from ._partition import partition_iid as partition_iid
from ._partition import partition_quantity_skew as partition_quantity_skew
from ._partition import partition_shards as partition_shards
from ._synthetic import cifar_like as cifar_like
from ._synthetic import emnist_like as emnist_like
from ._synthetic import synthetic_leaf as synthetic_leaf
from ._unreliable import UnreliableClients as UnreliableClients
