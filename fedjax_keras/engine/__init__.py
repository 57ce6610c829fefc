"""The engine: what runs any `FederatedAlgorithm`, apart from the algorithms themselves.

An algorithm (``fedjax_keras.algorithms``) is data: a client program, an
aggregator and a server update bundled as a `FederatedAlgorithm`. This package
runs it: `FederatedProcess` (``initialize`` / ``next``, the round loop over
chunks of clients under an executor of ``fedjax_keras.parallel``), the round's
compiled pieces (start, chunk program, finish), the `ServerState` pytree,
`EngineOptions`, and `sweep` (K runs in one vmapped program). It imports no
algorithm, as FedJAX's ``core/`` imports none of its ``algorithms/``.
"""

from fedjax_keras.engine._algorithm import Broadcast as Broadcast
from fedjax_keras.engine._algorithm import FederatedAlgorithm as FederatedAlgorithm
from fedjax_keras.engine._algorithm import FirstPass as FirstPass
from fedjax_keras.engine._algorithm import check_choice as check_choice
from fedjax_keras.engine._algorithm import default_broadcast as default_broadcast
from fedjax_keras.engine._algorithm import require_model as require_model
from fedjax_keras.engine._options import EngineOptions as EngineOptions
from fedjax_keras.engine._process import FederatedProcess as FederatedProcess
from fedjax_keras.engine._state import RoundOutput as RoundOutput
from fedjax_keras.engine._state import ServerState as ServerState
from fedjax_keras.engine._sweep import Sweep as Sweep
from fedjax_keras.engine._sweep import SweepOutput as SweepOutput
from fedjax_keras.engine._sweep import sweep as sweep
