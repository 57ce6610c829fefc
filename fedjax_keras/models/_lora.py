"""LoRA on any Keras model: low-rank factors trainable, every other weight frozen.

Keras' ``layer.enable_lora(rank)`` freezes one layer's kernel and adds two
factors; a keras_hub backbone's ``enable_lora`` also freezes the rest of the
backbone. `enable_lora` does the same for any model, so that what a client
trains, and so sends, is the factors (and the LoRA layers' biases, which Keras
leaves trainable): the few percent of the model that federated LoRA
fine-tuning communicates.
"""

import keras

_LORA_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)


def _backbone(keras_model):
    """The keras_hub backbone of a task or a backbone itself, else None."""
    for candidate in (keras_model, getattr(keras_model, "backbone", None)):
        if candidate is not None and callable(getattr(candidate, "default_lora_layer_names", None)):
            return candidate
    return None


def _check_rank(rank) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive int; received {rank!r}.")


def enable_lora(
    keras_model: keras.Model,
    rank: int,
    *,
    alpha: float | None = None,
    layer_names=None,
) -> tuple[str, ...]:
    """Enables LoRA on ``keras_model`` in place and freezes every other weight.

    Args:
      keras_model: a built Keras model. A keras_hub task or backbone uses its
        backbone's own ``enable_lora`` (by default the attention query and value
        projections); any other model gets LoRA on its Dense, EinsumDense and
        Embedding layers, or on those named.
      rank: the rank of the factors, a positive int.
      alpha: LoRA's scale numerator (the update is ``alpha / rank * a @ b``);
        default ``rank``, as in Keras.
      layer_names: the names (``layer.name``) of the layers to adapt; default
        as above.

    Returns:
      The names of the layers with LoRA, in the model's layer order.

    Raises:
      ValueError: ``rank`` not a positive int, the model not built, or a name
        in ``layer_names`` matching no layer that supports LoRA.
    """
    _check_rank(rank)
    if not keras_model.built:
        raise ValueError(
            f"enable_lora needs a built model; call {keras_model.name!r} on a batch "
            "(or build it) first."
        )
    backbone = _backbone(keras_model)
    layers = [layer for layer in keras_model._flatten_layers(include_self=False) if layer.weights]
    if layer_names is not None:
        layer_names = list(layer_names)
        supported = {layer.name for layer in layers if isinstance(layer, _LORA_LAYERS)}
        unknown = [name for name in layer_names if name not in supported]
        if unknown and backbone is None:
            raise ValueError(
                f"layer_names {unknown!r} name no Dense, EinsumDense or Embedding layer of "
                f"{keras_model.name!r}; those are {sorted(supported)!r}."
            )
    if backbone is not None:
        backbone.enable_lora(rank, target_layer_names=layer_names)
    else:
        # As keras_hub's Backbone.enable_lora: everything frozen, then each
        # adapted layer trainable again, so its factors (and bias) train.
        keras_model.trainable = True
        for layer in keras_model._flatten_layers(include_self=False):
            layer.trainable = False
        for layer in layers:
            wanted = layer.name in layer_names if layer_names is not None else True
            if isinstance(layer, _LORA_LAYERS) and wanted:
                layer.trainable = True
                layer.enable_lora(rank)
    adapted = [layer for layer in layers if getattr(layer, "lora_enabled", False)]
    if not adapted:
        raise ValueError(f"{keras_model.name!r} has no layer that LoRA applies to.")
    if alpha is not None:
        for layer in adapted:
            layer.lora_alpha = float(alpha)
    return tuple(layer.name for layer in adapted)
