"""`from_keras_model`: a Keras 3 model -> a `Model` of pure JAX functions.

The counterpart of TensorFlow Federated's ``tff.learning.from_keras_model``:
checks the Keras model, the example batch and the loss, metrics and optimizer
arguments up front (with the fix in each error), and builds the `Model`
(`fedjax_keras.models._model`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import keras
import numpy as np

from fedjax_keras import errors
from fedjax_keras.metrics import MetricSuite
from fedjax_keras.models import _backend
from fedjax_keras.models._batch import Batch, as_batch
from fedjax_keras.models._keras_metrics import build_metric_suite
from fedjax_keras.models._losses import build_output_losses
from fedjax_keras.models._model import Model
from fedjax_keras.models._outputs import OutputStructure
from fedjax_keras.models._variables import VariableLayout
from fedjax_keras.models._weights import ModelWeights
from fedjax_keras.optimizers import as_optimizer


def _spec_to_zeros(spec) -> np.ndarray:
    shape = tuple(1 if d is None else int(d) for d in spec.shape)
    dtype = getattr(spec.dtype, "as_numpy_dtype", spec.dtype)
    return np.zeros(shape, np.dtype(dtype))


def _concrete_batch(dummy_batch, input_spec) -> Batch:
    if (dummy_batch is None) == (input_spec is None):
        raise errors.InvalidBatchError(
            "Pass exactly one of dummy_batch (example arrays) and input_spec (shapes and "
            f"dtypes); received {'both' if dummy_batch is not None else 'neither'}."
        )
    if input_spec is not None:
        batch = as_batch(input_spec)
        is_spec = lambda s: hasattr(s, "shape") and hasattr(s, "dtype")  # noqa: E731
        try:
            return Batch(
                *(
                    None if part is None else jax.tree.map(_spec_to_zeros, part, is_leaf=is_spec)
                    for part in batch
                )
            )
        except (TypeError, AttributeError) as e:
            raise errors.InvalidBatchError(
                f"input_spec leaves must have .shape and .dtype (jax.ShapeDtypeStruct, "
                f"tf.TensorSpec); {e}"
            ) from e
    batch = as_batch(dummy_batch)

    def to_array(where, leaf):
        try:
            array = np.asarray(leaf)
        except ValueError as e:  # numpy >= 1.24 refuses ragged nested lists
            array, cause = None, e
        if array is None or array.dtype.kind not in "biuf":
            what = f"dtype {array.dtype}" if array is not None else f"({cause})"
            raise errors.InvalidBatchError(
                f"dummy_batch{where} is a {type(leaf).__name__} that does not convert to a "
                f"numeric array {what}; give numpy arrays of fixed shape and numeric dtype."
            )
        return array

    def convert(name, part):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: to_array(f"[{name!r}]{jax.tree_util.keystr(path)}", leaf),
            part,
            is_leaf=_is_nested_number_list,
        )

    return Batch(
        *(
            None if part is None else convert(name, part)
            for name, part in zip(("x", "y", "mask"), batch)
        )
    )


def _is_nested_number_list(value) -> bool:
    """A list of numbers (or of such lists) is one array, not several model inputs."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(e, (bool, int, float)) or _is_nested_number_list(e) for e in value)
    )


def from_keras_model(
    keras_model: keras.Model,
    dummy_batch=None,
    loss=None,
    loss_weights=None,
    metrics=None,
    optimizer=None,
    *,
    input_spec=None,
) -> Model:
    """Wraps an uncompiled Keras 3 model as a pure-JAX `Model`, like TFF's namesake.

    Args:
      keras_model: an uncompiled ``keras.Model`` (Sequential, functional or
        subclassed; TFF cannot wrap the last kind).
      dummy_batch: an example batch ``{'x': ..., 'y': ...}`` or ``(x, y)``;
        only shapes and dtypes matter.
      loss: a Keras loss (object, name, or function returning per-example
        losses), or a list / dict with one per output.
      loss_weights: optional list / dict of per-output weights.
      metrics: Keras metrics, metric names, or zero-argument callables
        returning metrics; a dict by output name for multi-output models.
      optimizer: optional optax transform or Keras optimizer for `train_step`.
      input_spec: shapes and dtypes of a batch (leaves with ``.shape`` and
        ``.dtype``: ``keras.KerasTensor``, ``tf.TensorSpec``, or
        ``jax.ShapeDtypeStruct``, which takes a ``None`` batch dimension only
        before jax 0.12), in place of ``dummy_batch``.

    Returns:
      A `Model`.

    Raises:
      NotAKerasModelError (TypeError): ``keras_model`` is not a ``keras.Model``.
      CompiledModelError (ValueError): the model was compiled.
      KerasBackendError: Keras does not run on JAX.
      InvalidBatchError: the dummy batch does not fit the model.
      LossKeysError (KeyError), LossSpecError: ``loss`` / ``loss_weights``
        do not match the outputs.
      MetricNotFunctionalError: a metric cannot be made functional.

    Example:
      >>> import keras, numpy as np, optax, fedjax_keras
      >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      >>> model = fedjax_keras.from_keras_model(
      ...     net, {'x': np.zeros((2, 4), np.float32), 'y': np.zeros((2,), np.int32)},
      ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      ...     metrics=[keras.metrics.SparseCategoricalAccuracy()],
      ...     optimizer=optax.sgd(0.1))
      >>> sorted(model.initial_weights.trainable)
      ['dense/bias', 'dense/kernel']
    """
    _backend.check_jax_backend()
    if not isinstance(keras_model, keras.Model):
        raise errors.NotAKerasModelError(
            f"keras_model must be a keras.Model (Keras 3); received {type(keras_model).__name__}. "
            "Build it with keras.Sequential, the functional API or a keras.Model subclass."
        )
    if getattr(keras_model, "compiled", False):
        raise errors.CompiledModelError(
            f"The Keras model {keras_model.name!r} is compiled; from_keras_model needs an "
            "uncompiled model (pass loss, metrics and optimizer here instead of to compile). "
            "Use keras.models.clone_model(model) to get an uncompiled copy"
            + (
                "; a keras_hub task compiles itself unless built with compile=False."
                if type(keras_model).__module__.startswith("keras_hub.")
                else "."
            )
        )
    if loss is None:
        raise errors.LossSpecError(
            "from_keras_model needs a loss (e.g. 'sparse_categorical_crossentropy')."
        )
    batch = _concrete_batch(dummy_batch, input_spec)
    if batch.y is None:
        raise errors.InvalidBatchError("dummy_batch / input_spec needs labels 'y' as well as 'x'.")
    try:
        if not all(layer.built for layer in keras_model._flatten_layers()):
            # Creates the variables of a lazy model. `model.build(shape)` on a
            # subclassed model marks it built without building its sub-layers,
            # which would then create variables inside our traced calls.
            keras_model(batch.x, training=False)
        layout = VariableLayout.of(keras_model)
        trainable = {p: jnp.asarray(np.array(v.value)) for p, v in layout.trainable}
        non_trainable = {p: jnp.asarray(np.array(v.value)) for p, v in layout.non_trainable}
    except Exception as e:
        raise errors.InvalidBatchError(
            f"dummy_batch['x'] does not fit the model's inputs: {type(e).__name__}: {e}"
        ) from e

    probe = Model(
        initial_weights=ModelWeights(trainable, non_trainable),
        output_names=(),
        metrics=MetricSuite(()),
        input_spec=None,
        _keras_model=keras_model,
        _layout=layout,
        _outputs=OutputStructure(("output",), "single"),
        _losses=(),
        _optimizer=None,
        _dummy_x=batch.x,
    )
    weights = probe.initial_weights
    try:
        outputs_spec = jax.eval_shape(lambda w, x: probe.apply(w, x), weights, batch.x)
    except Exception as e:
        raise errors.InvalidBatchError(
            f"dummy_batch['x'] does not fit the model's inputs: {type(e).__name__}: {e}"
        ) from e
    outputs = OutputStructure.of(outputs_spec, getattr(keras_model, "output_names", None))
    labels = outputs.split_labels(batch.y)
    predictions = [np.zeros(s.shape, s.dtype) for s in outputs.split_predictions(outputs_spec)]
    output_losses = build_output_losses(loss, loss_weights, outputs)
    suite = build_metric_suite(metrics, outputs.names, labels, predictions)
    model = dataclasses.replace(
        probe,
        output_names=outputs.names,
        metrics=suite,
        input_spec=jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(
                np.shape(a), jax.dtypes.canonicalize_dtype(np.asarray(a).dtype)
            ),
            {"x": batch.x, "y": batch.y},
        ),
        _outputs=outputs,
        _losses=output_losses,
        _optimizer=None if optimizer is None else as_optimizer(optimizer, trainable),
        _random_paths=probe._find_random_paths(batch.x),
    )
    try:
        jax.eval_shape(
            lambda w: model.loss(w, {"x": batch.x, "y": batch.y}, training=False), weights
        )
    except errors.LossSpecError:
        raise
    except Exception as e:
        raise errors.InvalidBatchError(
            f"The loss cannot be computed on dummy_batch (labels vs predictions "
            f"{[tuple(p.shape) for p in predictions]}): {type(e).__name__}: {e}"
        ) from e
    return model
