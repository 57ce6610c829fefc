"""Federated data: the client container, cohort sampling, and padded batching."""

from ._federated_data import FederatedData as FederatedData
