"""Aggregators: how client contributions become one aggregate.

Means and sums, differential privacy (`dp_aggregator`, DP-FTRL's
`dp_ftrl_aggregator`, `clipped`, `zeroed`),
Byzantine robustness (`median`, `trimmed_mean`, `krum`, and `attacked` to
simulate attacks), compression (`quantized`, `top_k`), and `from_config` to
build any of them from a dict.
"""

from fedjax_keras.aggregation._aggregator import Aggregator as Aggregator
from fedjax_keras.aggregation._aggregator import Contributions as Contributions
from fedjax_keras.aggregation._aggregator import SumState as SumState
from fedjax_keras.aggregation._aggregator import by_key as by_key
from fedjax_keras.aggregation._aggregator import check_aggregator as check_aggregator
from fedjax_keras.aggregation._aggregator import keep_mask as keep_mask
from fedjax_keras.aggregation._aggregator import masked_sum as masked_sum
from fedjax_keras.aggregation._aggregator import mean as mean
from fedjax_keras.aggregation._aggregator import safe_divide as safe_divide
from fedjax_keras.aggregation._aggregator import sum as sum
from fedjax_keras.aggregation._aggregator import zeros_like_spec as zeros_like_spec
from fedjax_keras.aggregation._attack import ATTACKS as ATTACKS
from fedjax_keras.aggregation._attack import attacked as attacked
from fedjax_keras.aggregation._clipping import client_norms as client_norms
from fedjax_keras.aggregation._clipping import clipped as clipped
from fedjax_keras.aggregation._clipping import zeroed as zeroed
from fedjax_keras.aggregation._compression import hadamard as hadamard
from fedjax_keras.aggregation._compression import quantized as quantized
from fedjax_keras.aggregation._compression import top_k as top_k
from fedjax_keras.aggregation._compression import upload_size as upload_size
from fedjax_keras.aggregation._config import from_config as from_config
from fedjax_keras.aggregation._dp import DPState as DPState
from fedjax_keras.aggregation._dp import dp_aggregator as dp_aggregator
from fedjax_keras.aggregation._robust import krum as krum
from fedjax_keras.aggregation._robust import median as median
from fedjax_keras.aggregation._robust import trimmed_mean as trimmed_mean
from fedjax_keras.aggregation._tree_aggregation import TreeState as TreeState
from fedjax_keras.aggregation._tree_aggregation import dp_ftrl_aggregator as dp_ftrl_aggregator
