"""Aggregating client results: running sums on device, weighted or uniform means."""

from fedjax_keras.aggregation._accumulator import Accumulator as Accumulator
from fedjax_keras.aggregation._accumulator import ClientOutput as ClientOutput
from fedjax_keras.aggregation._accumulator import accumulate as accumulate
from fedjax_keras.aggregation._accumulator import init_accumulator as init_accumulator
from fedjax_keras.aggregation._accumulator import weighted_mean as weighted_mean
