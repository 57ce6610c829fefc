"""The containers of model weights and of one batch's outputs."""

from typing import Any, NamedTuple

import jax

Params = dict[str, jax.Array]


class ModelWeights(NamedTuple):
    """The weights of a model, as in TFF's `tff.learning.models.ModelWeights`.

    Attributes:
      trainable: dict mapping each trainable variable's structural path
        (e.g. ``'dense/kernel'``) to its array.
      non_trainable: dict for the non-trainable variables (BatchNormalization
        statistics, layers frozen with ``trainable=False``). Random-number seed
        states are not weights and are not included: randomness comes from the
        ``rng`` argument of each call.

    A `ModelWeights` is a pytree, so it can be passed through `jax.jit`,
    `jax.vmap` (with a leading clients axis on every leaf) and `jax.tree.map`.
    """

    trainable: Params
    non_trainable: Params


class BatchOutput(NamedTuple):
    """What a forward pass on one batch returns (TFF's `BatchOutput`).

    Attributes:
      loss: scalar, the masked mean loss plus regularization losses.
      predictions: the model's outputs, leaves [batch, ...].
      num_examples: int32 scalar, the number of unmasked examples.
      non_trainable: the non-trainable weights after the pass (updated
        BatchNormalization statistics in training mode; unchanged otherwise).
      output_masks: per output, the Keras mask of its elements (from
        ``Embedding(mask_zero=True)`` or ``Masking``) or None; masked elements
        count in neither the loss nor the metrics.
    """

    loss: jax.Array
    predictions: Any
    num_examples: jax.Array
    non_trainable: Params
    output_masks: Any = None
