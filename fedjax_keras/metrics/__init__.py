"""Functional, mergeable metrics (sum-then-finalize, as in TFF)."""

from fedjax_keras.metrics._functional import FunctionalMetric as FunctionalMetric
from fedjax_keras.metrics._functional import MetricSuite as MetricSuite
from fedjax_keras.metrics._functional import merge_by_sum as merge_by_sum
