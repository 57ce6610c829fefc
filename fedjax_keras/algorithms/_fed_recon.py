"""Federated Reconstruction: local parameters rebuilt every round, never sent, never stored.

Singhal, Sidahmed, Garrett, Wu, Rush and Prakash, "Federated Reconstruction:
Partially Local Federated Learning", NeurIPS 2021, arXiv:2102.03448; TFF's
``tff.learning.reconstruction`` (``build_fed_recon``, ``build_fed_recon_eval``).

The trainable weights are split by layer name as in `split_head`: the
*local* weights (``local_layers``, by default the output layer) and the
*global* rest. A round, for a client with server weights ``(g, l0)``:

1. reconstruction: the local weights start from ``l0`` (the server's copy,
   which it never changes: the model's initial values unless
   ``set_model_weights`` put others there) or from zeros, and the first
   ``reconstruction_steps`` batches with examples each make one step of the
   reconstruction optimizer on them, the global weights frozen;
2. training: every later batch makes one step of the client optimizer on the
   global weights, the reconstructed local weights frozen;
3. the client sends the global delta ``g_k - g`` only, weighted by the
   examples of its training batches (TFF's ``NUM_EXAMPLES``) or 1; its local
   weights are dropped. The server steps its optimizer on ``-aggregate``
   over the global weights.

No client table: a client sampled twice reconstructs from scratch each time.
The split between reconstruction and training is by batches (TFF's
``dataset_split_fn`` in the form this engine's one pass over the batches
allows): with the engine's ``shuffle`` (the default in training) each round
reconstructs on a fresh random ``reconstruction_steps * batch_size`` of the
client's examples and trains on the rest; with ``epochs=E`` the pass is E
epochs and training also revisits the reconstruction examples (as TFF's
default split, which uses all the data for both). A client with
``reconstruction_steps`` batches or fewer trains nothing: its weight is 0.
The round's loss and metrics are those of the training batches.

Evaluation (`fed_recon_eval`): each client reconstructs the same way from the
broadcast weights, then scores the remaining batches in inference mode; the
sums are added over clients and finalized once.
"""

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._tree import tree_where
from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import check_count
from fedjax_keras.algorithms._fed_rep import _body_algorithm, _part, split_head
from fedjax_keras.algorithms._metric_sums import MetricSums, add_batch, add_output, empty_sums
from fedjax_keras.algorithms._schedules import init_for_run
from fedjax_keras.algorithms._weighting import ClientWeighting, as_client_weighting, client_weight
from fedjax_keras.client import ClientOutput, ClientProgram, with_float_mask
from fedjax_keras.engine import (
    FederatedAlgorithm,
    FederatedProcess,
    check_choice,
    require_model,
)
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import as_optimizer

LOCAL_INITS = ("initial", "zeros")


class ReconCarry(NamedTuple):
    """One client's state between steps (training and evaluation alike).

    Attributes:
      weights: `ModelWeights`, global and local.
      local_state: the reconstruction optimizer's state (local weights).
      global_state: the client optimizer's state (global weights); ``()`` in evaluation.
      sums: `MetricSums` of the training (or evaluated) batches.
      num_steps: int32 scalar, batches with examples so far.
    """

    weights: ModelWeights
    local_state: Any
    global_state: Any
    sums: MetricSums
    num_steps: jax.Array


def _split(model, local_layers, reconstruction_steps, local_init):
    """``(local paths, global paths, reconstruction steps)``, checked at build time."""
    require_model(model)
    steps = check_count(reconstruction_steps, "reconstruction_steps", minimum=1)
    check_choice(local_init, LOCAL_INITS, "local_init")
    trainable = model.initial_weights.trainable
    with warnings.catch_warnings():
        # split_head's warning for an all-personal model: here it is an error, below.
        warnings.simplefilter("ignore", UserWarning)
        local, global_ = split_head(trainable, local_layers, argument="local_layers")
    if not global_:
        raise ValueError(
            f"local_layers {local_layers!r} hold every trainable weight, so no weight is global "
            "and the server would learn nothing. Name only the per-client layers (the model's "
            f"weights: {list(trainable)!r})."
        )
    return local, global_, steps


def _reconstruction(model, reconstruction_optimizer, local, steps, local_init):
    """``(start local weights, optimizer, step)`` of the reconstruction phase.

    The step is ``(carry, batch, key) -> (carry, grads, output, on_rest)``:
    the batch's training-mode gradient of every trainable weight and its
    `BatchOutput` at the carry's weights, and one reconstruction update of
    the local weights while fewer than ``steps`` batches with examples were
    seen; ``on_rest``: the batch has examples and belongs to the rest
    (training, or evaluation). A batch is in one phase only, so the training
    phase uses the same gradient (its global part): one gradient per step.
    """
    template = _part(model.initial_weights.trainable, local)
    opt = as_optimizer(reconstruction_optimizer, template, argument="reconstruction_optimizer")
    grad_fn = jax.value_and_grad(model.loss_and_output, has_aux=True)

    def start_local(broadcast):
        server_local = _part(broadcast.model.trainable, local)
        if local_init == "zeros":
            return jax.tree.map(jnp.zeros_like, server_local)
        return server_local

    def step(carry: ReconCarry, batch, key):
        trainable, non_trainable = carry.weights
        (_, output), grads = grad_fn(trainable, non_trainable, batch, training=True, rng=key)
        has = output.num_examples > 0
        on_recon = has & (carry.num_steps < steps)
        new_local, local_state = opt.update(
            _part(grads, local), carry.local_state, _part(trainable, local)
        )
        carry = carry._replace(
            weights=ModelWeights(
                {**trainable, **tree_where(on_recon, new_local, _part(trainable, local))},
                tree_where(on_recon, output.non_trainable, non_trainable),
            ),
            local_state=tree_where(on_recon, local_state, carry.local_state),
            num_steps=carry.num_steps + has.astype(jnp.int32),
        )
        return carry, grads, output, has & ~on_recon

    return start_local, opt, step


def _train_program(model, client_optimizer, reconstruct, global_, weighting):
    start_local, recon_opt, recon_step = reconstruct
    template = _part(model.initial_weights.trainable, global_)
    opt = as_optimizer(client_optimizer, template, argument="client_optimizer")

    def start(broadcast, client_state):
        own = start_local(broadcast)
        return ReconCarry(
            ModelWeights({**broadcast.model.trainable, **own}, broadcast.model.non_trainable),
            recon_opt.init(own),
            # The run's client hyper-parameters (a sweep's rates) are the client optimizer's.
            init_for_run(opt, _part(broadcast.model.trainable, global_), broadcast),
            empty_sums(model),
            jnp.zeros((), jnp.int32),
        )

    def step(carry: ReconCarry, batch, key, broadcast, client_state) -> ReconCarry:
        batch = with_float_mask(batch)
        # A reconstruction batch leaves the global weights where they were, so ``grads``
        # (taken before it) is the training gradient of a training batch.
        carry, grads, output, on_train = recon_step(carry, batch, key)
        trainable, non_trainable = carry.weights
        new_global, global_state = opt.update(
            _part(grads, global_), carry.global_state, _part(trainable, global_)
        )
        return carry._replace(
            weights=ModelWeights(
                {**trainable, **tree_where(on_train, new_global, _part(trainable, global_))},
                tree_where(on_train, output.non_trainable, non_trainable),
            ),
            global_state=tree_where(on_train, global_state, carry.global_state),
            sums=tree_where(on_train, add_output(model, carry.sums, batch, output), carry.sums),
        )

    def finish(carry: ReconCarry, broadcast, client_state) -> ClientOutput:
        final = carry.weights.trainable
        delta = {p: final[p] - broadcast.model.trainable[p] for p in global_}
        weight = client_weight(carry.sums.num_examples, weighting)
        # Only the global delta leaves the client; its local weights end here.
        return ClientOutput.from_training(carry.sums, delta, weight)

    return ClientProgram(start, step, finish)


def fed_recon(
    model: Model,
    client_optimizer,
    reconstruction_optimizer,
    server_optimizer=None,
    *,
    local_layers=None,
    reconstruction_steps: int = 1,
    local_init: str = "initial",
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """Federated Reconstruction (Singhal et al. 2021, arXiv:2102.03448) as a `FederatedAlgorithm`.

    Each round every client reconstructs its local weights from scratch on
    its first ``reconstruction_steps`` batches (global weights frozen), trains
    the global weights on its other batches (local weights frozen), and sends
    the global delta only (module docstring).

    Args:
      model: from `from_keras_model`.
      client_optimizer: the local optimizer of the global weights (training phase).
      reconstruction_optimizer: the optimizer of the local weights
        (reconstruction phase; TFF's ``reconstruction_optimizer_fn``).
      server_optimizer: applied to ``-aggregate(global delta)``; default ``optax.sgd(1.0)``.
      local_layers: the per-client layers by name (``'dense_1'``,
        ``('dense_1', 'dense_2')``, ``'dense_1,dense_2'``), a predicate
        ``path -> bool`` on weight paths, or None for the layer of the last
        trainable weight; they may not hold every trainable weight.
      reconstruction_steps: batches (with examples) that reconstruct the local
        weights before the rest train the global ones; at least 1.
      local_init: where reconstruction starts: ``'initial'`` (the server's
        copy of the local weights, which it never changes: the model's
        initial values) or ``'zeros'``.
      weighting: `ClientWeighting` (or its value): the examples of the
        training batches (TFF's default), or 1 for a client with any.
      aggregator: combines the global deltas (default: the weighted mean).

    Returns:
      A `FederatedAlgorithm` without a client table; the server's local
      weights never change.

    Raises:
      ValueError: unknown ``local_layers`` (the message lists the model's
        layers), local layers holding every weight, ``reconstruction_steps``
        below 1, an unknown ``local_init``.

    Example:
      >>> algorithm = fed_recon(model, optax.sgd(0.05), optax.sgd(0.1), reconstruction_steps=2)
      >>> process = FederatedProcess(model, algorithm, batch_size=10)
    """
    local, global_, steps = _split(model, local_layers, reconstruction_steps, local_init)
    weighting = as_client_weighting(weighting)
    reconstruct = _reconstruction(model, reconstruction_optimizer, local, steps, local_init)
    program = _train_program(model, client_optimizer, reconstruct, global_, weighting)
    return _body_algorithm(
        "fed_recon", model, program, local, global_, server_optimizer, aggregator, keeps_heads=False
    )


@process_builder(fed_recon)
def build_fed_recon(*args, **kwargs) -> FederatedProcess:
    """Federated Reconstruction (Singhal et al. 2021, arXiv:2102.03448; TFF's ``build_fed_recon``).

    Args:
      model: from `from_keras_model`.
      client_optimizer: trains the global weights after reconstruction.
      reconstruction_optimizer: reconstructs the local weights.
      server_optimizer: applied to ``-aggregate(global delta)``; default ``optax.sgd(1.0)``.
      local_layers: the per-client layers (names, or a predicate on weight
        paths); None: the layer of the last trainable weight.
      reconstruction_steps: batches that reconstruct before the rest train;
        keep it below the clients' step counts, or they train nothing.
      local_init: 'initial' (the model's initial values) or 'zeros'.
      weighting: 'num_examples' (examples of the training batches) or 'uniform'.
      aggregator: combines the global deltas (default: the weighted mean).
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`; its round metrics are the loss and metrics of the
      training batches (after reconstruction).

    Example:
      >>> process = build_fed_recon(model, optax.sgd(0.05), optax.sgd(0.1),
      ...                           reconstruction_steps=2, batch_size=10)
      >>> out = process.next(process.initialize(0), data.sample_clients(5, seed=0))
    """


def fed_recon_eval(
    model: Model,
    reconstruction_optimizer,
    *,
    local_layers=None,
    reconstruction_steps: int = 1,
    local_init: str = "initial",
) -> FederatedAlgorithm:
    """Federated Reconstruction's evaluation (TFF's ``build_fed_recon_eval``) as an algorithm.

    Every client reconstructs its local weights from the broadcast model as
    `fed_recon` does (its first ``reconstruction_steps`` batches), then scores
    its other batches in inference mode; the unfinalized sums are added over
    clients and finalized once; the state never changes. Run it with
    ``epochs=1`` (`build_fed_recon_eval` also turns shuffling off).

    Args:
      model: from `from_keras_model`.
      reconstruction_optimizer: the optimizer of the local weights.
      local_layers, reconstruction_steps, local_init: as in `fed_recon`.

    Example:
      >>> evaluate = FederatedProcess(model, fed_recon_eval(model, optax.sgd(0.1)), shuffle=False)
    """
    local, _, steps = _split(model, local_layers, reconstruction_steps, local_init)
    start_local, recon_opt, recon_step = _reconstruction(
        model, reconstruction_optimizer, local, steps, local_init
    )

    def start(broadcast, client_state):
        own = start_local(broadcast)
        weights = ModelWeights({**broadcast.model.trainable, **own}, broadcast.model.non_trainable)
        return ReconCarry(
            weights, recon_opt.init(own), (), empty_sums(model), jnp.zeros((), jnp.int32)
        )

    def step(carry: ReconCarry, batch, key, broadcast, client_state) -> ReconCarry:
        batch = with_float_mask(batch)
        carry, _, _, on_eval = recon_step(carry, batch, key)
        scored = add_batch(model, carry.sums, carry.weights, batch)
        return carry._replace(sums=tree_where(on_eval, scored, carry.sums))

    def finish(carry: ReconCarry, broadcast, client_state) -> ClientOutput:
        weight = carry.sums.num_examples.astype(jnp.float32)
        return ClientOutput.from_training(carry.sums, (), weight)

    return FederatedAlgorithm(
        name="fed_recon_eval",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: ((), ()),
        server_update=lambda state, aggregate, key: (state, {}),
    )


def build_fed_recon_eval(
    model: Model,
    reconstruction_optimizer,
    *,
    local_layers=None,
    reconstruction_steps: int = 1,
    local_init: str = "initial",
    **engine_options,
) -> FederatedProcess:
    """Reconstruct, then evaluate (TFF's ``build_fed_recon_eval``): `fed_recon_eval` unshuffled.

    Use ``process.set_model_weights(process.initialize(), weights)`` to
    evaluate trained weights (a `build_fed_recon` process's
    ``get_model_weights(state)``).

    Args:
      model: from `from_keras_model`.
      reconstruction_optimizer: the optimizer of the local weights.
      local_layers, reconstruction_steps, local_init: as in `fed_recon`; use
        the training run's.
      **engine_options: batch_size, chunk_size, step_buckets, runner, ...;
        ``shuffle`` defaults to False (the same reconstruction batches every
        call), ``epochs`` must be 1.

    Returns:
      A `FederatedProcess` whose round metrics are ``loss``, the model's
      metrics and ``num_examples`` over the evaluated (not the reconstruction)
      batches.

    Example:
      >>> evaluate = build_fed_recon_eval(model, optax.sgd(0.1), reconstruction_steps=2,
      ...                                 batch_size=10)
      >>> state = evaluate.set_model_weights(evaluate.initialize(), trained_weights)
      >>> metrics = evaluate.next(state, test_data).metrics
    """
    options = {"shuffle": False, **engine_options}
    if options.get("epochs", 1) != 1:
        raise ValueError(
            f"Evaluation reads each example once; epochs must be 1, not {options.get('epochs')!r}."
        )
    algorithm = fed_recon_eval(
        model,
        reconstruction_optimizer,
        local_layers=local_layers,
        reconstruction_steps=reconstruction_steps,
        local_init=local_init,
    )
    return FederatedProcess(model, algorithm, **options)
