"""Checking integer labels against the classes a model predicts, on the host, once.

Keras on JAX trains nothing on a sparse label out of range (the one-hot row
is all zeros) and reports loss 0, so a label 100 on a 62-class model, or a
negative label, would pass silently. For every output trained with a sparse
categorical loss, the labels' minimum and maximum are compared with the
output's last axis; float labels are accepted when they hold whole numbers
(Keras casts them to integers), and refused otherwise.
"""

import weakref

import jax
import keras
import numpy as np

from fedjax_keras import errors


def _is_sparse(loss) -> bool:
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return True
    fn = getattr(loss, "fn", None)
    return getattr(fn, "__name__", "") == "sparse_categorical_crossentropy"


def _client_of_row(data, row: int) -> str:
    """Names the client of ``data`` owning source row ``row`` (or says none of them does)."""
    _, starts = data.source_rows
    sizes = data.client_sizes
    owners = np.flatnonzero((starts <= row) & (row < starts + sizes))
    if len(owners):
        return f"client {data.client_ids[int(owners[0])]!r}"
    return f"row {row} of the population (a client outside this cohort)"


# model -> its outputs' shapes: tracing the model costs ~10 ms, and a list cohort
# is a new source (checked again) every round.
_OUTPUT_SHAPES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _output_shapes(model):
    if model not in _OUTPUT_SHAPES:
        _OUTPUT_SHAPES[model] = jax.eval_shape(
            lambda w: model.apply(w, model._dummy_x), model.initial_weights
        )
    return _OUTPUT_SHAPES[model]


def check_labels(model, data) -> None:
    """Raises `LabelRangeError` when a sparse label is outside ``[0, classes)``.

    Args:
      model: a wrapped `Model`.
      data: a `FederatedData`; its whole source (the population, for a
        sampled cohort) is checked.
    """
    sparse = [i for i, output_loss in enumerate(model._losses) if _is_sparse(output_loss.loss)]
    if not sparse:
        return
    source, _ = data.source_rows
    outputs = _output_shapes(model)
    predictions = model._outputs.split_predictions(outputs)
    labels = model._outputs.split_labels(source["y"])
    for index in sparse:
        y = np.asarray(labels[index])
        name = model._outputs.names[index]
        num_classes = int(predictions[index].shape[-1])
        if y.size == 0:
            continue
        if y.dtype.kind == "f":
            whole = np.isfinite(y) & (y == np.round(y))
            if not whole.all():
                row = int(np.argmin(whole.reshape(len(y), -1).all(axis=1)))
                bad = y[row].reshape(-1)[np.argmin(whole[row].reshape(-1))]
                raise errors.LabelRangeError(
                    f"Output {name!r} is trained with a sparse categorical loss, so its labels "
                    f"must be class indices; {_client_of_row(data, row)} has the label "
                    f"{bad.item()!r}. "
                    "Give integer labels (float labels holding whole numbers are cast)."
                )
        elif y.dtype.kind not in "iub":
            raise errors.LabelRangeError(
                f"Output {name!r} is trained with a sparse categorical loss, so its labels must "
                f"be integer class indices; received dtype {y.dtype}."
            )
        low, high = y.min(), y.max()
        if low >= 0 and high < num_classes:
            continue
        flat = y.reshape(len(y), -1)
        row = int(np.flatnonzero(((flat < 0) | (flat >= num_classes)).any(axis=1))[0])
        bad = flat[row][(flat[row] < 0) | (flat[row] >= num_classes)][0]
        raise errors.LabelRangeError(
            f"{_client_of_row(data, row).capitalize()} has the label {bad.item()!r} for output "
            f"{name!r}, but the model predicts {num_classes} classes (labels 0..{num_classes - 1}"
            "); Keras would silently train nothing on it. Fix the labels or give the model "
            f"{int(high) + 1 if high >= num_classes else num_classes} outputs."
        )
