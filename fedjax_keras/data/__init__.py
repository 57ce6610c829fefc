"""Federated data: the client container, cohort sampling, and padded batching."""

from ._batching import ClientBatches as ClientBatches
from ._batching import CohortPlan as CohortPlan
from ._batching import plan_cohort as plan_cohort
from ._federated_data import FederatedData as FederatedData
