"""Where a round's padding comes from, and a warning when it dominates.

A `CohortPlan` lays every chunk out as ``[clients, steps, batch]`` slots. A
slot is padding for one of three reasons:

- **partial batches**: a client's last batch of each epoch is not full;
- **steps**: a chunk runs as many steps as its largest client (rounded up to
  a step bucket), so smaller clients of the chunk idle in the extra steps;
- **dummy clients**: the last chunk is filled up to ``chunk_size``.

Padded slots cost compute on the vmapped runner (the host-driven runners skip
dummy clients and each group's padded trailing steps). `padding_warning`
names the main cause and the option that reduces it; the engine reports it
when padding exceeds half of a round's slots.
"""

from typing import NamedTuple

import numpy as np

from ._batching import CohortPlan


class PaddingBreakdown(NamedTuple):
    """Fractions of a round's slots, summing to 1 (all float).

    Attributes:
      real: slots holding an example.
      partial_batches: empty slots of a client's own steps.
      steps: slots of steps past a client's last one, up to its chunk's step count.
      dummy_clients: slots of the dummy clients that fill the last chunk.
    """

    real: float
    partial_batches: float
    steps: float
    dummy_clients: float


def padding_breakdown(plan: CohortPlan) -> PaddingBreakdown:
    """Splits ``plan``'s slots into real examples and the three kinds of padding."""
    width = plan.padded_batch_size
    total = int(plan.chunk_steps.sum()) * plan.chunk_size * width
    real = plan.epochs * plan.num_examples
    own_steps = int(plan.client_num_steps.sum()) * width
    dummies = plan.num_chunks * plan.chunk_size - len(plan.order)
    dummy_slots = dummies * int(plan.chunk_steps[-1]) * width
    return PaddingBreakdown(
        real / total,
        (own_steps - real) / total,
        (total - own_steps - dummy_slots) / total,
        dummy_slots / total,
    )


def padding_warning(plan: CohortPlan, threshold: float = 0.5) -> str | None:
    """A message naming the cause of the padding when it exceeds ``threshold``, else None.

    Args:
      plan: a round's `CohortPlan`.
      threshold: the padded fraction of all slots above which to warn.

    Returns:
      One paragraph for the user, or None.

    Example:
      >>> import numpy as np
      >>> from fedjax_keras.data import FederatedData, plan_cohort
      >>> data = FederatedData.from_arrays(np.ones((41, 2)), np.zeros(41), [0, 40, 41])
      >>> print(padding_warning(plan_cohort(data, batch_size=2, shuffle=False)))
      ... # doctest: +NORMALIZE_WHITESPACE
      32% of this round's example slots held an example; 68% were padding (partial
      batches 1%, steps past a client's last 67%, dummy clients 0%). The cohort's
      clients need from 1 to 20 steps (batch_size=2) and share chunks of 2 clients:
      a smaller chunk_size, or step_buckets='geometric' or 'exact', pads less.
    """
    parts = padding_breakdown(plan)
    padded = 1.0 - parts.real
    if padded <= threshold:
        return None
    sizes = plan.client_num_examples
    steps = plan.client_num_steps
    causes = {
        "partial_batches": (
            f"batch_size={plan.batch_size} is large for these clients (median "
            f"{int(np.median(sizes))} examples, largest {int(sizes.max())}): a batch_size near "
            "the typical client's size pads less."
        ),
        "steps": (
            f"The cohort's clients need from {int(steps.min())} to {int(steps.max())} steps "
            f"(batch_size={plan.batch_size}) and share chunks of {plan.chunk_size} clients: a "
            "smaller chunk_size, or step_buckets='geometric' or 'exact', pads less."
        ),
        "dummy_clients": (
            f"The last chunk is filled with dummy clients ({len(plan.order)} clients in chunks "
            f"of {plan.chunk_size}): a chunk_size that divides the cohort size pads less."
        ),
    }
    main = max(causes, key=lambda name: getattr(parts, name))
    return (
        f"{parts.real:.0%} of this round's example slots held an example; {padded:.0%} were "
        f"padding (partial batches {parts.partial_batches:.0%}, steps past a client's last "
        f"{parts.steps:.0%}, dummy clients {parts.dummy_clients:.0%}). {causes[main]}"
    )
