"""Errors raised by fedjax_keras, one class per mistake a user can make.

Each class derives from the built-in exception a Python user would expect
(``TypeError``, ``ValueError``, ``KeyError``), so ``except ValueError`` still
catches it; its docstring is the long explanation.
"""


class NotAKerasModelError(TypeError):
    """`from_keras_model` was given something that is not a `keras.Model`.

    Build the model with Keras 3 (`keras.Sequential`, the functional API, or a
    subclass of `keras.Model`) and pass the model object itself, not a function
    that builds it.
    """


class CompiledModelError(ValueError):
    """The Keras model handed to `from_keras_model` was already compiled.

    As in TensorFlow Federated, the loss, metrics and optimizer are given to
    `from_keras_model` itself; compiling would attach Keras-side state that the
    functional model never uses. Pass an uncompiled model (e.g. build a new one,
    or use `keras.models.clone_model`).
    """


class KerasBackendError(RuntimeError):
    """Keras runs on a backend other than JAX.

    Keras fixes its backend at first import. fedjax_keras sets
    ``KERAS_BACKEND=jax`` when it is imported before keras and the user has not
    chosen; if keras was imported first with another backend, restart Python
    and either import fedjax_keras first or set ``KERAS_BACKEND=jax``.
    """


class InvalidBatchError(ValueError):
    """A batch (or `dummy_batch` / `input_spec`) has the wrong structure.

    Batches are a dict ``{'x': ..., 'y': ...}`` (optionally with ``'mask'``,
    a per-example 0/1 array of shape [batch]) or a tuple ``(x, y)`` /
    ``(x, y, mask)``. ``x`` may be nested (dict or list) for multi-input models.
    """


class LossSpecError(ValueError):
    """`loss` or `loss_weights` does not match the model's outputs."""


class LossKeysError(KeyError):
    """`loss` or `loss_weights` is a dict whose keys differ from the output names.

    The keys must be exactly the model's output names (``model.output_names`` in
    Keras); the message lists the missing and unexpected keys.
    """

    def __str__(self):  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class MetricNotFunctionalError(TypeError):
    """A metric could not be turned into a pure (init, update, merge, finalize) metric.

    fedjax_keras accepts `keras.metrics.Metric` objects (or zero-argument
    callables returning them, or metric names Keras knows). The metric's
    `update_state` must be traceable by JAX: it may only change its state
    through its Keras variables (`variable.assign(...)`), never through Python
    attributes.
    """


class NoOptimizerError(ValueError):
    """A training entry point was used on a model wrapped without an optimizer.

    Pass ``optimizer=`` to `from_keras_model`, or give the client optimizer to
    the federated algorithm builder instead.
    """


class WeightsMismatchError(ValueError):
    """Weights do not fit the Keras model they are written into.

    Weights are matched by structural path (layer class names within their
    container, then variable names), so a clone or a new instance of the same
    architecture accepts them. The message lists the paths that are missing,
    unexpected or of the wrong shape.
    """


class StateMismatchError(ValueError):
    """A `ServerState` was given to a process other than the one that built it.

    A state fixes the model's weights, the server optimizer's state, the
    algorithm's and the aggregator's state and the client table; a process
    built with another model, optimizer, algorithm or aggregator cannot run
    it. The message names the parts and paths that differ. Use the process's
    own ``initialize()``, or restore a checkpoint that the process wrote.
    """


class NonFiniteServerUpdateError(FloatingPointError):
    """The server update of a round was NaN or inf, so it was not applied.

    The previous server state is kept (the model is never overwritten with
    NaN), and after ``max_nonfinite_rounds`` consecutive such rounds (1 by
    default) `next` raises this error naming the round and the state leaves
    that were not finite. Usual causes: a server learning rate too high for
    an adaptive optimizer, a NaN learning rate, or an exploding aggregate.
    """


class LabelRangeError(ValueError):
    """Integer labels fall outside the classes the model predicts.

    With a sparse categorical loss, label ``k`` needs the model's last output
    axis to have more than ``k`` entries; Keras on JAX silently trains nothing
    (and reports loss 0) on labels out of range. The message names the client
    and the label. Fix the labels, or give the model as many outputs as there
    are classes.
    """


# Warnings (filter them by class with `warnings.filterwarnings`).


class XlaTuningWarning(UserWarning):
    """fedjax_keras could not turn off XLA:CPU's slow YNNPACK convolution fusions.

    JAX had already started its CPU backend when fedjax_keras was imported, and
    XLA reads ``XLA_FLAGS`` only then. Import fedjax_keras before running any
    JAX computation, or start Python with
    ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``; set
    ``FEDJAX_KERAS_XLA_TUNING=0`` to silence this (see docs/performance.md).
    """


class PaddingWarning(UserWarning):
    """More than half of a round's example slots were padding (said once per process).

    Padding costs compute on the vmapped executor. The message names the main
    cause (partial batches, steps past a client's last within its chunk, or
    dummy clients filling the last chunk) and the option that reduces it; see
    ``fedjax_keras.data.padding_warning`` and docs/performance.md.
    """
