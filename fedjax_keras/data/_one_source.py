"""Populations as views on one copy of all their examples (what a sweep keeps on the device)."""

import jax
import numpy as np

from ._federated_data import FederatedData


def share_one_source(populations: list[FederatedData]) -> list[FederatedData]:
    """The populations as views on one copy of all their examples.

    A sweep keeps one source of examples on the device for all its runs, but
    runs of different seeds train on different splits of the task. Each view
    keeps its population's clients, ids and positions (so its cohorts, their
    batches and their random keys are the single run's) and reads its rows
    from the concatenation of the distinct populations' arrays.

    Args:
      populations: one `FederatedData` per run; the same object may repeat.

    Returns:
      One view per entry of ``populations``, in order (the inputs themselves when
      they are all one object).
    """
    distinct = list({id(p): p for p in populations}.values())
    if len(distinct) == 1:
        return list(populations)
    sources = [p.source_rows for p in distinct]
    offsets = np.cumsum([0] + [len(jax.tree.leaves(source)[0]) for source, _ in sources])
    union = jax.tree.map(lambda *leaves: np.concatenate(leaves), *(s for s, _ in sources))
    views = {
        id(p): FederatedData._view(
            union,
            starts + offset,
            p.client_sizes,
            p.client_ids,
            p.population_ids,
            p.population_positions,
            p.population_size,
        )
        for p, (_, starts), offset in zip(distinct, sources, offsets)
    }
    return [views[id(p)] for p in populations]
