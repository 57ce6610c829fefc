"""Keras losses as one masked, scalar loss function over a model's outputs.

Keras' default reduction (``sum_over_batch_size``) divides by the number of
elements in the batch, padding included. A padded batch must give the same loss
as Keras on the unpadded one, so we reduce ourselves: the masked sum divided by
the number of unmasked elements.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import keras

# Not exported by keras 3 (`keras.losses.LossFunctionWrapper` does not exist);
# it is what `compile(loss='mse')` wraps loss functions in, rank fixes included.
from keras.src.losses.losses import LossFunctionWrapper

from fedjax_keras import errors
from fedjax_keras.models._outputs import OutputStructure

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "auto")


def _as_keras_loss(loss: Any, where: str) -> keras.losses.Loss:
    if isinstance(loss, keras.losses.Loss):
        return loss
    if isinstance(loss, str):
        try:
            resolved = keras.losses.get(loss)
        except ValueError as e:
            raise errors.LossSpecError(f"{where}: Keras knows no loss named {loss!r}.") from e
        return _as_keras_loss(resolved, where)
    if isinstance(loss, type) and issubclass(loss, keras.losses.Loss):
        return loss()
    if callable(loss):
        return LossFunctionWrapper(loss, name=getattr(loss, "__name__", "loss"))
    raise errors.LossSpecError(
        f"{where} must be a keras.losses.Loss, a loss name or a function (y_true, y_pred) "
        f"-> per-example losses; received {loss!r}."
    )


@dataclasses.dataclass(frozen=True)
class OutputLoss:
    """One output's loss, its weight, and how to reduce it."""

    loss: keras.losses.Loss
    weight: float

    def __call__(self, y_true, y_pred, mask, keras_mask=None) -> jnp.ndarray:
        """Masked reduction of the per-element losses.

        Args:
          y_true: labels [batch, ...].
          y_pred: predictions [batch, ...].
          mask: float32 [batch].
          keras_mask: the output's Keras mask [batch, ...] or None.

        Returns:
          scalar: the weighted loss for this output.
        """
        dtype = self.loss.dtype or "float32"
        values = self.loss.call(
            jnp.asarray(y_true).astype(dtype), jnp.asarray(y_pred).astype(dtype)
        )
        values = jnp.asarray(values, dtype)
        if values.ndim == 0:
            raise errors.LossSpecError(
                f"The loss {self.loss.name!r} returned a scalar; fedjax_keras needs per-example "
                "losses of shape [batch, ...] to mask padded examples. Return unreduced values."
            )
        element_mask = jnp.broadcast_to(
            mask.reshape(mask.shape + (1,) * (values.ndim - 1)), values.shape
        ).astype(dtype)
        if keras_mask is not None:
            element_mask = element_mask * _broadcast_mask(keras_mask, values).astype(dtype)
        # jnp.where, not a product: a padded example with a NaN loss must not leak in.
        total = jnp.sum(jnp.where(element_mask > 0, values * element_mask, 0.0))
        if self.loss.reduction == "sum":
            reduced = total
        else:
            reduced = total / jnp.maximum(jnp.sum(element_mask), 1.0)
        return self.weight * reduced


def _per_output(spec: Any, names: Sequence[str], arg: str) -> list:
    """Spreads a list or dict `spec` over the outputs; KeyError/LossSpecError on mismatch."""
    if isinstance(spec, Mapping):
        missing = [n for n in names if n not in spec]
        unexpected = [k for k in spec if k not in names]
        if missing or unexpected:
            raise errors.LossKeysError(
                f"`{arg}` is a dict whose keys must be the model's output names {list(names)!r}; "
                f"missing {missing!r}, unexpected {unexpected!r}."
            )
        return [spec[n] for n in names]
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(names):
            raise errors.LossSpecError(
                f"`{arg}` is a {type(spec).__name__} of length {len(spec)}, but the model has "
                f"{len(names)} outputs {list(names)!r}: give one entry per output, in order."
            )
        return list(spec)
    return None


def build_output_losses(
    loss: Any, loss_weights: Any, outputs: OutputStructure
) -> tuple[OutputLoss, ...]:
    """Pairs each model output with its Keras loss and weight (TFF's rules).

    Args:
      loss: a loss (applied to every output), or a list / dict with one per output.
      loss_weights: None (all 1), or a list / dict with one float per output.
      outputs: the model's output structure.

    Raises:
      LossKeysError: a dict whose keys are not the output names.
      LossSpecError: a list of the wrong length, or an unusable loss.
    """
    names = outputs.names
    losses = _per_output(loss, names, "loss")
    if losses is None:
        losses = [loss] * len(names)
    if loss_weights is None:
        weights = [1.0] * len(names)
    else:
        weights = _per_output(loss_weights, names, "loss_weights")
        if weights is None:
            if len(names) != 1:
                raise errors.LossSpecError(
                    f"`loss_weights` must be a list or dict with one weight per output "
                    f"{list(names)!r}; received {loss_weights!r}."
                )
            weights = [loss_weights]
    result = []
    for name, output_loss, weight in zip(names, losses, weights):
        keras_loss = _as_keras_loss(output_loss, f"`loss` for output {name!r}")
        if keras_loss.reduction not in _MEAN_REDUCTIONS + ("sum",):
            raise errors.LossSpecError(
                f"The loss for output {name!r} has reduction={keras_loss.reduction!r}; training "
                "needs a scalar: use 'sum_over_batch_size' (Keras' default) or 'sum'."
            )
        try:
            weight = float(weight)
        except (TypeError, ValueError) as e:
            raise errors.LossSpecError(
                f"`loss_weights` for output {name!r} must be a number; received {weight!r}."
            ) from e
        result.append(OutputLoss(keras_loss, weight))
    return tuple(result)


def _broadcast_mask(keras_mask, values):
    """A Keras mask [batch, ...] broadcast to per-element values [batch, ...]."""
    keras_mask = jnp.asarray(keras_mask)
    if keras_mask.ndim > values.ndim:  # e.g. a [batch, time] mask on per-example values
        keras_mask = jnp.any(keras_mask, axis=tuple(range(values.ndim, keras_mask.ndim)))
    keras_mask = keras_mask.reshape(keras_mask.shape + (1,) * (values.ndim - keras_mask.ndim))
    return jnp.broadcast_to(keras_mask, values.shape)


def total_loss(
    output_losses: Sequence[OutputLoss],
    labels: list,
    predictions: list,
    mask,
    extra_losses,
    keras_masks=None,
) -> jnp.ndarray:
    """Sum of the weighted per-output losses and the model's regularization losses."""
    total = jnp.zeros((), jnp.float32)
    keras_masks = keras_masks or [None] * len(output_losses)
    for output_loss, y_true, y_pred, keras_mask in zip(
        output_losses, labels, predictions, keras_masks
    ):
        total = total + output_loss(y_true, y_pred, mask, keras_mask)
    for extra in extra_losses:
        total = total + jnp.sum(jnp.asarray(extra, jnp.float32))
    return total


LossFn = Callable[..., jnp.ndarray]
