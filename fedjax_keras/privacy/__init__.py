"""Privacy accounting for differentially private training (needs ``fedjax_keras[dp]``).

`accountant(...)` computes the (epsilon, delta) of a DP-FedAvg run with
dp-accounting's RDP or PLD accountant and plugs into a process as
``host_metrics=``; `noise_multiplier_for(...)` picks the noise before a run;
`tree_accountant(...)` does the same for DP-FTRL (tree aggregation, no
sampling assumption, a bound on each client's participation instead).
Importing this module does not need dp-accounting; using it does.
"""

from fedjax_keras.privacy._accountant import Accountant as Accountant
from fedjax_keras.privacy._accountant import accountant as accountant
from fedjax_keras.privacy._accountant import noise_multiplier_for as noise_multiplier_for
from fedjax_keras.privacy._tree_accountant import TreeAccountant as TreeAccountant
from fedjax_keras.privacy._tree_accountant import tree_accountant as tree_accountant
