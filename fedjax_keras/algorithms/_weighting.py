"""How much each client's update counts in the aggregate: TFF's ``ClientWeighting``.

The builders and factories accept the enum or its string value
(``'num_examples'``, ``'uniform'``, as the builders always have);
`as_client_weighting` normalises either once, at the boundary, and the client
programs see the enum only.
"""

import enum

import jax.numpy as jnp


class ClientWeighting(enum.Enum):
    """A client's aggregation weight (``tff.learning.ClientWeighting``).

    Attributes:
      NUM_EXAMPLES: its number of examples (the weighted mean).
      UNIFORM: 1 for every client with at least one example, 0 otherwise.
    """

    NUM_EXAMPLES = "num_examples"
    UNIFORM = "uniform"


def as_client_weighting(weighting) -> ClientWeighting:
    """``weighting`` (a `ClientWeighting` or its string value) as the enum.

    Raises:
      ValueError: anything else; the message names the choices.
    """
    if isinstance(weighting, ClientWeighting):
        return weighting
    for choice in ClientWeighting:
        if isinstance(weighting, str) and weighting == choice.value:
            return choice
    choices = tuple(choice.value for choice in ClientWeighting)
    raise ValueError(
        f"weighting must be one of {choices} (or fedjax_keras.algorithms.ClientWeighting."
        f"NUM_EXAMPLES / UNIFORM); received {weighting!r}."
    )


def client_weight(num_examples, weighting: ClientWeighting):
    """A client's aggregation weight: its example count, or 1 if it has any examples."""
    if weighting is ClientWeighting.NUM_EXAMPLES:
        return num_examples.astype(jnp.float32)
    return jnp.where(num_examples > 0, 1.0, 0.0)
