"""A model whose examples carry extra per-example fields that the Keras model never sees.

Some algorithms need a per-example value next to the inputs: personalization
evaluation marks each example as train or test (`build_personalization_eval`).
A cohort carries it inside ``x``: ``x = {'inputs': <the model's x>, <field>:
[batch]}``. The engine checks every cohort against its model's ``input_spec``
and traces the loss on it, so the process must run with a model that accepts
that ``x``: `with_example_fields` makes one, equal to the wrapped model in
everything else (weights, losses, metrics), which drops the fields before
calling Keras.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.models._model import Model

INPUTS = "inputs"


@dataclasses.dataclass(frozen=True, eq=False)
class _ModelWithFields(Model):
    """`Model` whose ``x`` is ``{'inputs': x, **fields}``; Keras sees ``x['inputs']``."""

    _base: Model | None = dataclasses.field(default=None, repr=False)

    def _call(self, trainable, non_trainable, x, *, training: bool, rng):
        return super()._call(trainable, non_trainable, x[INPUTS], training=training, rng=rng)

    def to_keras(self, weights, keras_model=None, *, merge_lora=False):
        return self._base.to_keras(weights, keras_model, merge_lora=merge_lora)


def with_example_fields(model: Model, fields: Mapping[str, object]) -> Model:
    """The same model, taking ``x = {'inputs': x, **fields}`` with one value per example.

    Args:
      model: from `from_keras_model`.
      fields: field name -> dtype (e.g. ``{'is_test': bool}``); each field is an
        array [batch] in every batch. ``'inputs'`` is reserved.

    Returns:
      A `Model` with the same weights, losses and metrics, whose ``input_spec``
      and calls take the extended ``x`` (`split_example_fields` splits it).

    Raises:
      TypeError: ``model`` is not a `Model`.
      ValueError: no field, or a field named ``'inputs'``.

    Example:
      >>> tagged = with_example_fields(model, {"is_test": bool})
      >>> sorted(tagged.input_spec["x"])
      ['inputs', 'is_test']
    """
    if not isinstance(model, Model):
        raise TypeError(
            f"with_example_fields takes a Model from from_keras_model; received "
            f"{type(model).__name__}."
        )
    if isinstance(model, _ModelWithFields):
        model = model._base
    fields = dict(fields)
    if not fields or INPUTS in fields:
        raise ValueError(
            f"fields must name at least one per-example field other than {INPUTS!r}; "
            f"received {sorted(fields)!r}."
        )
    batch = jax.tree.leaves(model.input_spec["x"])[0].shape[0]
    specs = {name: jax.ShapeDtypeStruct((batch,), jnp.dtype(d)) for name, d in fields.items()}
    dummy = {name: np.zeros(s.shape, s.dtype) for name, s in specs.items()}
    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(Model)}
    values.update(
        input_spec={**model.input_spec, "x": {INPUTS: model.input_spec["x"], **specs}},
        _dummy_x={INPUTS: model._dummy_x, **dummy},
    )
    return _ModelWithFields(**values, _base=model)


def split_example_fields(batch: dict) -> tuple[dict, dict]:
    """``(model batch, fields)`` from a batch whose ``x`` carries example fields.

    Args:
      batch: ``{'x': {'inputs': x, **fields}, 'y': y, 'mask': mask}``.

    Returns:
      ``({'x': x, 'y': y, 'mask': mask}, fields)``.
    """
    x = dict(batch["x"])
    inputs = x.pop(INPUTS)
    return {**batch, "x": inputs}, x
