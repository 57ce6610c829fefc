"""Privacy accounting for differentially private training (needs ``fedjax_keras[dp]``).

`accountant(...)` computes the (epsilon, delta) of a DP-FedAvg run with
dp-accounting's RDP or PLD accountant and plugs into a process as
``host_metrics=``; `noise_multiplier_for(...)` picks the noise before a run.
Importing this module does not need dp-accounting; using it does.
"""

from fedjax_keras.privacy._accountant import Accountant as Accountant
from fedjax_keras.privacy._accountant import accountant as accountant
from fedjax_keras.privacy._accountant import noise_multiplier_for as noise_multiplier_for
