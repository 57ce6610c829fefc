"""`Model`: a Keras 3 model as pure JAX functions over explicit pytrees.

Built by `from_keras_model` (`fedjax_keras.models._from_keras`). Every
computation runs the Keras model inside a ``keras.StatelessScope`` whose state
mapping holds the weights passed in, so the Keras model itself is never changed,
and the functions work under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

One job: the wrapped model's functions (call, loss, one training step, metrics,
``to_keras``) over one set of private parts (variable layout, outputs, losses);
they share that state and the Keras model, so they stay in one class.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import keras
import optax

from fedjax_keras import errors
from fedjax_keras._tree import tree_where
from fedjax_keras.metrics import MetricSuite
from fedjax_keras.models._batch import as_batch, example_mask, zero_padded_examples
from fedjax_keras.models._labels import check_labels
from fedjax_keras.models._losses import OutputLoss, total_loss
from fedjax_keras.models._outputs import OutputStructure
from fedjax_keras.models._to_keras import fresh_copy, write_weights
from fedjax_keras.models._variables import VariableLayout
from fedjax_keras.models._weights import BatchOutput, ModelWeights
from fedjax_keras.optimizers import Optimizer, from_optax


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A Keras model wrapped as pure functions; build it with `from_keras_model`.

    Attributes:
      initial_weights: `ModelWeights` copied from the Keras model at wrap time.
      output_names: one name per model output.
      metrics: the `MetricSuite` built from the ``metrics`` argument.
      input_spec: pytree of ``jax.ShapeDtypeStruct`` for one batch
        ``{'x': ..., 'y': ...}``, taken from ``dummy_batch`` / ``input_spec``.
    """

    initial_weights: ModelWeights
    output_names: tuple[str, ...]
    metrics: MetricSuite
    input_spec: Any
    _keras_model: keras.Model = dataclasses.field(repr=False)
    _layout: VariableLayout = dataclasses.field(repr=False)
    _outputs: OutputStructure = dataclasses.field(repr=False)
    _losses: tuple[OutputLoss, ...] = dataclasses.field(repr=False)
    _optimizer: Optimizer | None = dataclasses.field(repr=False)
    _dummy_x: Any = dataclasses.field(repr=False)
    # Paths of the seed states a training-mode call actually draws from. An LSTM
    # or a Dropout(0.0) owns a seed generator but never draws, and needs no rng.
    _random_paths: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    # ----------------------------------------------------------------- calling
    @property
    def has_randomness(self) -> bool:
        """Whether training-mode calls draw random numbers (Dropout, noise), so need ``rng``."""
        return bool(self._random_paths)

    def _seed_values(self, rng, training: bool) -> list:
        if not self._layout.seed_states:
            return []
        if rng is None:
            if training and self._random_paths:
                raise ValueError(
                    "This model has random layers ("
                    + ", ".join(self._random_paths)
                    + ") and runs in training mode, so it needs a key: pass "
                    "rng=jax.random.key(seed)."
                )
            return [jnp.asarray(v.value) for _, v in self._layout.seed_states]
        # Keras keeps Dropout's randomness in seed-generator variables; deriving each
        # from the caller's key makes masks depend on `rng` alone, so vmapped clients
        # with different keys never share masks.
        return [
            jax.random.bits(jax.random.fold_in(rng, index), (2,), jnp.uint32)
            for index in range(len(self._layout.seed_states))
        ]

    def _call(self, trainable, non_trainable, x, *, training: bool, rng):
        """Runs the Keras model statelessly.

        Returns:
          (outputs, new non-trainable dict, list of extra scalar losses, per-output
          Keras masks: a list with None or an array [batch, ...] for each output).
        """
        layout = self._layout
        mapping = [(v, trainable[path]) for path, v in layout.trainable]
        mapping += [(v, non_trainable[path]) for path, v in layout.non_trainable]
        mapping += [
            (v, value)
            for (_, v), value in zip(layout.seed_states, self._seed_values(rng, training))
        ]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            outputs = self._keras_model(x, training=training)
            extra_losses = list(self._keras_model.losses)
        new_non_trainable = {path: scope.get_current_value(v) for path, v in layout.non_trainable}
        # Masks from Embedding(mask_zero=True) or Masking travel on the outputs; Keras'
        # losses and metrics skip the masked elements, and so do ours.
        masks = [_keras_mask(o) for o in self._outputs.split_predictions(outputs)]
        return outputs, new_non_trainable, extra_losses, masks

    def _find_random_paths(self, x) -> tuple[str, ...]:
        """Paths of the seed states that a training-mode call on ``x`` advances."""
        seeds = self._layout.seed_states
        if not seeds:
            return ()
        advanced: list[str] = []

        def run(weights):
            mapping = [(v, weights.trainable[p]) for p, v in self._layout.trainable]
            mapping += [(v, weights.non_trainable[p]) for p, v in self._layout.non_trainable]
            mapping += [(v, jnp.zeros((2,), jnp.uint32)) for _, v in seeds]
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
                before = [scope.get_current_value(v) for _, v in seeds]
                self._keras_model(x, training=True)
                advanced.extend(
                    path
                    for (path, v), old in zip(seeds, before)
                    if scope.get_current_value(v) is not old
                )
            return 0

        jax.eval_shape(run, self.initial_weights)
        return tuple(advanced)

    def apply(self, weights: ModelWeights, x, *, training: bool = False, rng=None):
        """The model's predictions for inputs ``x``.

        Args:
          weights: a `ModelWeights`.
          x: inputs, a pytree of arrays with leaves [batch, ...].
          training: run layers in training mode (Dropout active, BatchNormalization
            on batch statistics).
          rng: a JAX key; required in training mode when `has_randomness`.

        Returns:
          With ``training=False``, the predictions (the model's output structure,
          leaves [batch, ...]). With ``training=True``, ``(predictions,
          new_non_trainable)`` where the second item holds the updated
          non-trainable weights (e.g. BatchNormalization moving statistics).
        """
        outputs, new_non_trainable, _, _ = self._call(
            weights.trainable, weights.non_trainable, x, training=training, rng=rng
        )
        return (outputs, new_non_trainable) if training else outputs

    def forward_pass(self, weights: ModelWeights, batch, *, training: bool = True, rng=None):
        """Loss, predictions and example count for one batch (TFF's ``forward_pass``).

        Args:
          weights: a `ModelWeights`.
          batch: ``{'x', 'y'[, 'mask']}`` or ``(x, y[, mask])``; ``mask`` is
            [batch] with 0 for padded examples, which then change neither the
            loss, its gradient, nor ``num_examples``.
          training: training mode (see `apply`).
          rng: a JAX key (see `apply`).

        Returns:
          `BatchOutput`.
        """
        _, output = self.loss_and_output(
            weights.trainable, weights.non_trainable, batch, training=training, rng=rng
        )
        return output

    def loss(self, weights: ModelWeights, batch, *, training: bool = True, rng=None):
        """Scalar loss for one batch, differentiable with `jax.grad`.

        It is the sum over outputs of ``loss_weight * masked mean loss``, plus
        the model's regularization and ``add_loss`` losses, as in Keras.
        """
        loss, _ = self.loss_and_output(
            weights.trainable, weights.non_trainable, batch, training=training, rng=rng
        )
        return loss

    def loss_and_output(self, trainable, non_trainable, batch, *, training=True, rng=None):
        """``(loss, BatchOutput)``, shaped for ``jax.value_and_grad(..., has_aux=True)``.

        Args:
          trainable: dict of trainable weights (the argument to differentiate).
          non_trainable: dict of non-trainable weights.
          batch: as in `forward_pass`.
        """
        batch = zero_padded_examples(as_batch(batch))
        mask = example_mask(batch)
        outputs, new_non_trainable, extra, masks = self._call(
            trainable, non_trainable, batch.x, training=training, rng=rng
        )
        labels = self._outputs.split_labels(batch.y)
        predictions = self._outputs.split_predictions(outputs)
        loss = total_loss(self._losses, labels, predictions, mask, extra, masks)
        num_examples = jnp.sum(mask).astype(jnp.int32)
        return loss, BatchOutput(loss, outputs, num_examples, new_non_trainable, tuple(masks))

    def check_labels(self, data) -> None:
        """Raises `LabelRangeError` if a sparse label of ``data`` is not a class of the model.

        Args:
          data: a `FederatedData`; its whole source (the population a cohort was
            sampled from) is checked with one min and max per output on the host.
        """
        check_labels(self, data)

    @property
    def has_convolutions(self) -> bool:
        """Whether any layer is a convolution (the engine runs those per client on a CPU)."""
        return any(
            "Conv" in type(layer).__name__
            for layer in self._keras_model._flatten_layers(include_self=False)
        )

    # ----------------------------------------------------------------- training
    @property
    def optimizer(self) -> Optimizer:
        """The functional optimizer given to `from_keras_model`.

        Raises:
          NoOptimizerError: when none was given.
        """
        if self._optimizer is None:
            raise errors.NoOptimizerError(
                "This model was wrapped without an optimizer: pass optimizer= to "
                "from_keras_model (an optax transform or a Keras optimizer), or give the "
                "client optimizer to the algorithm builder."
            )
        return self._optimizer

    def init_optimizer_state(self, weights: ModelWeights):
        """The optimizer state for ``weights.trainable``."""
        return self.optimizer.init(weights.trainable)

    def train_step(
        self,
        weights: ModelWeights,
        optimizer_state,
        batch,
        *,
        rng=None,
        optimizer=None,
        grad_correction=None,
    ):
        """One gradient step on one batch, like Keras ``train_on_batch``.

        A batch whose mask is all zeros (a padded step) leaves the weights and
        the optimizer state unchanged, momentum and step counters included.
        This is the one implementation of a local step: a client's
        (`fedjax_keras.client.training_step`) runs it too.

        Args:
          weights: a `ModelWeights`.
          optimizer_state: from `init_optimizer_state`.
          batch: as in `forward_pass`.
          rng: a JAX key (see `apply`).
          optimizer: an `Optimizer` or optax transform to use instead of the
            model's own (a Keras optimizer must go through
            `fedjax_keras.optimizers.as_optimizer` first: it needs building
            outside jit, and its state comes from that `Optimizer`'s ``init``).
          grad_correction: optional ``(grads, trainable) -> grads``, applied
            before the optimizer (how FedProx and SCAFFOLD change the gradient).

        Returns:
          ``(new_weights, new_optimizer_state, BatchOutput)``; the output holds the
          loss and predictions computed before the step.
        """
        if optimizer is None:
            optimizer = self.optimizer
        elif not isinstance(optimizer, Optimizer):
            # An optax transform's update returns updates, not new parameters:
            # using it as an `Optimizer` unwrapped would silently train wrongly.
            if not isinstance(optimizer, optax.GradientTransformation):
                raise TypeError(
                    "train_step's optimizer= must be a fedjax_keras.optimizers.Optimizer or an "
                    f"optax transform; received {type(optimizer).__name__}. Wrap Keras "
                    "optimizers with fedjax_keras.optimizers.as_optimizer(opt, weights.trainable)."
                )
            optimizer = from_optax(optimizer)
        grad_fn = jax.value_and_grad(self.loss_and_output, has_aux=True)
        (_, output), grads = grad_fn(
            weights.trainable, weights.non_trainable, batch, training=True, rng=rng
        )
        if grad_correction is not None:
            grads = grad_correction(grads, weights.trainable)
        new_trainable, new_state = optimizer.update(grads, optimizer_state, weights.trainable)
        has_examples = output.num_examples > 0
        # jnp.where, not a product: a padded step's values may be NaN and must not leak in.
        new_weights = ModelWeights(
            tree_where(has_examples, new_trainable, weights.trainable),
            tree_where(has_examples, output.non_trainable, weights.non_trainable),
        )
        return new_weights, tree_where(has_examples, new_state, optimizer_state), output

    # ------------------------------------------------------------------ metrics
    def init_metrics(self) -> dict:
        """Empty unfinalized metric state (a dict by metric name)."""
        return self.metrics.init()

    def update_metrics(self, state: dict, batch, predictions, output_masks=None) -> dict:
        """Adds one batch's (masked) examples to the unfinalized metric state.

        Args:
          state: from `init_metrics` or a previous update.
          batch: the batch (its ``mask`` marks padded examples).
          predictions: the model's outputs for the batch.
          output_masks: ``BatchOutput.output_masks``, the Keras masks of the
            outputs (e.g. from ``Embedding(mask_zero=True)``), skipped by metrics.
        """
        # Padded rows may hold anything (NaN included): zero them, since Keras
        # metrics weight values by the mask and 0 * NaN is NaN.
        batch = zero_padded_examples(as_batch(batch)._replace(x=predictions))
        return self.metrics.update(
            state,
            self._outputs.split_labels(batch.y),
            self._outputs.split_predictions(batch.x),
            example_mask(batch),
            output_masks,
        )

    def merge_metrics(self, a: dict, b: dict) -> dict:
        """Merges two unfinalized states by summing (TFF's sum-then-finalize)."""
        return self.metrics.merge(a, b)

    def finalize_metrics(self, state: dict) -> dict:
        """Final metric values from an unfinalized (possibly merged) state."""
        return self.metrics.finalize(state)

    # -------------------------------------------------------------- round trip
    def to_keras(
        self,
        weights: ModelWeights,
        keras_model: keras.Model | None = None,
        *,
        merge_lora: bool = False,
    ) -> keras.Model:
        """Writes ``weights`` into a Keras model, matching variables by path.

        Args:
          weights: a `ModelWeights` (e.g. a trained server model).
          keras_model: the Keras model to write into. By default a fresh copy
            of the wrapped model with its variable structure (from its config
            for a subclass such as a keras_hub task, else
            ``keras.models.clone_model``; LoRA enabled where the wrapped model
            has it); the wrapped model is never changed.
          merge_lora: fold each LoRA layer's factors into its kernel (or
            embeddings), ``kernel + alpha / rank * lora_a @ lora_b`` as Keras
            computes it, and write into a model without LoRA: the plain
            fine-tuned model, to save or serve.

        Returns:
          The Keras model holding ``weights``, ready to save, evaluate or serve.

        Raises:
          WeightsMismatchError: paths missing, unexpected or of the wrong shape;
            LoRA factors for a ``keras_model`` without LoRA there (or LoRA in it
            with ``merge_lora``).
        """
        if keras_model is None:
            keras_model = fresh_copy(self._keras_model, self._layout, self._dummy_x, merge_lora)
        return write_weights(
            weights,
            keras_model,
            self._layout,
            self._dummy_x,
            merge_lora=merge_lora,
            strict=True,
        )


def _keras_mask(output):
    """The Keras mask carried by an output (Embedding(mask_zero=True), Masking), or None."""
    from keras.src.backend.common.masking import get_keras_mask

    mask = get_keras_mask(output)
    return None if mask is None else jnp.asarray(mask)
