"""Federated Reconstruction against reconstruct-then-train written out by hand with plain jax."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from engine_reference import make_clients, weighted_mean, wrap
from personal_reference import batches_of

from fedjax_keras.aggregation import mean
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    FederatedProcess,
    build_fed_recon,
    build_fed_recon_eval,
    fed_recon,
    fed_recon_eval,
    get_algorithm,
    split_head,
)
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR, RECON_LR, SERVER_LR, RECON_STEPS = 3, 0.1, 0.3, 0.7, 2
SIZES = [12, 5, 0, 9]  # 4, 2, 0 and 3 batches: the second client only reconstructs
TOL = {"rtol": 1e-5, "atol": 1e-6}
ENGINE = {"batch_size": BATCH, "shuffle": False}


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=51))


@pytest.fixture(scope="module")
def cohort():
    return make_clients(SIZES, seed=52)


@pytest.fixture(scope="module")
def parts(model):
    """(output layer, local paths: its kernel and bias, global paths: the hidden layer)."""
    paths = list(model.initial_weights.trainable)
    layer = paths[-1].rsplit("/", 1)[0]
    local = tuple(p for p in paths if p.startswith(layer + "/"))
    return layer, local, tuple(p for p in paths if p not in local)


def _sgd_by_hand(model, trainable, non_trainable, batches, rate, only):
    """Plain SGD on the paths ``only``; also the training-mode loss sum before each step."""
    value_and_grad = jax.value_and_grad(
        lambda t, b: model.loss(ModelWeights(t, non_trainable), b, training=True)
    )
    loss_sum = 0.0
    for batch in batches:
        loss, grads = value_and_grad(trainable, batch)
        loss_sum += float(loss) * len(batch["y"])
        trainable = {k: v - rate * grads[k] if k in only else v for k, v in trainable.items()}
    return trainable, loss_sum


def _reconstruct(model, server, client, local, local_init="initial"):
    """The client's local weights rebuilt from scratch on its first RECON_STEPS batches."""
    start = dict(server.trainable)
    if local_init == "zeros":
        start.update({p: jnp.zeros_like(start[p]) for p in local})
    batches = batches_of(client, BATCH)
    rebuilt, _ = _sgd_by_hand(
        model, start, server.non_trainable, batches[:RECON_STEPS], RECON_LR, local
    )
    return rebuilt, batches[RECON_STEPS:]


def _rounds_by_hand(model, cohort, local, global_, rounds, local_init="initial"):
    """(server weights, mean training loss) after each round."""
    server = model.initial_weights
    history = []
    for _ in range(rounds):
        deltas, weights, loss_sum = [], [], 0.0
        for _, client in cohort:
            rebuilt, rest = _reconstruct(model, server, client, local, local_init)
            final, client_loss = _sgd_by_hand(
                model, rebuilt, server.non_trainable, rest, LR, global_
            )
            weight = sum(len(b["y"]) for b in rest)
            if weight:  # a client without training batches adds nothing
                deltas.append({p: np.asarray(final[p] - server.trainable[p]) for p in global_})
                weights.append(weight)
                loss_sum += client_loss
        mean_delta = weighted_mean(deltas, weights)
        trainable = dict(server.trainable)
        trainable.update({p: trainable[p] + SERVER_LR * mean_delta[p] for p in global_})
        server = ModelWeights(trainable, server.non_trainable)
        history.append((server, loss_sum / sum(weights)))
    return history


def _factory_process(model, layer, runner, **options):
    algorithm = fed_recon(
        model,
        optax.sgd(LR),
        optax.sgd(RECON_LR),
        optax.sgd(SERVER_LR),
        local_layers=(layer,),
        reconstruction_steps=RECON_STEPS,
        **options,
    )
    return FederatedProcess(model, algorithm, runner=runner, **ENGINE)


@functools.cache
def _trained(model, cohort, layer, runner, rounds=2):
    """Round outputs of the factory's process under ``runner``, computed once per runner."""
    process = _factory_process(model, layer, runner)
    state, outs = process.initialize(0), []
    for _ in range(rounds):
        out = process.next(state, cohort)
        state = out.state
        outs.append(out)
    return outs


@pytest.mark.parametrize("variant", ["builder", "registry"])
def test_one_and_two_rounds_equal_reconstruct_then_train_by_hand(model, cohort, parts, variant):
    layer, local, global_ = parts
    if variant == "builder":
        process = build_fed_recon(
            model,
            optax.sgd(LR),
            optax.sgd(RECON_LR),
            optax.sgd(SERVER_LR),
            local_layers=layer,
            reconstruction_steps=RECON_STEPS,
            runner="vmap",
            **ENGINE,
        )
    else:
        entry = get_algorithm("fedrecon")
        options = {**entry.options, "reconstruction_steps": RECON_STEPS}
        options.update(local_layers=layer, reconstruction_lr=RECON_LR)
        settings = AlgorithmSettings(LR, SERVER_LR, cohort.num_clients, options)
        process = entry.make(model, settings, runner="sequential", **ENGINE)
    state = process.initialize(0)
    for server, loss in _rounds_by_hand(model, cohort, local, global_, 2):
        out = process.next(state, cohort)
        state = out.state
        assert_trees_all_close(state.model, server, **TOL)
        np.testing.assert_allclose(out.metrics["loss"], loss, rtol=1e-5)
        # Examples of the training batches only: 12 - 6 and 9 - 6.
        assert out.metrics["num_examples"] == 9


def test_zero_local_init_reconstructs_from_zeros(model, cohort, parts):
    layer, local, global_ = parts
    (server, _), *_ = _rounds_by_hand(model, cohort, local, global_, 1, local_init="zeros")
    process = _factory_process(model, layer, "vmap", local_init="zeros")
    state = process.next(process.initialize(0), cohort).state
    assert_trees_all_close(state.model, server, **TOL)


def test_local_weights_never_reach_the_aggregate_or_change_on_the_server(model, cohort, parts):
    layer, local, global_ = parts
    specs = []
    inner = mean()

    def recording_init(spec):
        specs.append(spec)  # the structure of one client's update, at build time
        return inner.init(spec)

    algorithm = fed_recon(
        model,
        optax.sgd(LR),
        optax.sgd(RECON_LR),
        local_layers=layer,
        reconstruction_steps=RECON_STEPS,
        aggregator=inner._replace(init=recording_init),
    )
    process = FederatedProcess(model, algorithm, **ENGINE)
    state = process.initialize(0)
    for _ in range(2):
        state = process.next(state, cohort).state
    assert specs and all(sorted(spec) == sorted(global_) for spec in specs)
    for p in local:
        np.testing.assert_array_equal(state.model.trainable[p], model.initial_weights.trainable[p])
    for p in global_:
        assert not np.allclose(state.model.trainable[p], model.initial_weights.trainable[p])
    # Nothing is kept per client: no client table rows of the algorithm's.
    assert algorithm.client_state_init is None


def test_a_client_seen_again_reconstructs_from_scratch(model, parts):
    """Round 2 on a client seen in round 1 equals round 2 on a fresh copy of its data."""
    layer = parts[0]
    base = make_clients([9, 12], seed=53)
    again = base.client(0)
    population = type(base).from_client_dict(
        {"seen": again, "other": base.client(1), "fresh copy": again}
    )
    first, seen, fresh = population.subset([0, 1]), population.subset([0]), population.subset([2])
    process = _factory_process(model, layer, "vmap")
    after_first = process.next(process.initialize(0), first).state
    revisited = process.next(after_first, seen)
    copied = process.next(after_first, fresh)
    assert_trees_all_close(revisited.state.model, copied.state.model, rtol=0, atol=0)
    assert revisited.metrics["loss"] == copied.metrics["loss"]


def test_vmap_and_sequential_executors_agree(model, cohort, parts):
    layer = parts[0]
    for vmapped, sequential in zip(
        _trained(model, cohort, layer, "vmap"), _trained(model, cohort, layer, "sequential")
    ):
        assert_trees_all_close(sequential.state.model, vmapped.state.model, **TOL)
        np.testing.assert_allclose(sequential.metrics["loss"], vmapped.metrics["loss"], 1e-6)


def test_evaluation_equals_reconstruct_then_score_by_hand(model, cohort, parts):
    layer, local, _ = parts
    trained = _trained(model, cohort, layer, "vmap")[-1].state.model
    evaluate = build_fed_recon_eval(
        model,
        optax.sgd(RECON_LR),
        local_layers=layer,
        reconstruction_steps=RECON_STEPS,
        batch_size=BATCH,
    )
    state = evaluate.set_model_weights(evaluate.initialize(), trained)
    metrics = evaluate.next(state, cohort).metrics
    loss_sum, correct, count = 0.0, 0, 0
    for _, client in cohort:
        rebuilt, rest = _reconstruct(model, trained, client, local)
        weights = ModelWeights(rebuilt, trained.non_trainable)
        for batch in rest:
            logits = model.forward_pass(weights, batch, training=False).predictions
            loss_sum += float(model.loss(weights, batch, training=False)) * len(batch["y"])
            correct += int(np.sum(np.argmax(logits, -1) == batch["y"]))
            count += len(batch["y"])
    assert metrics["num_examples"] == count == 9
    np.testing.assert_allclose(metrics["loss"], loss_sum / count, rtol=1e-5)
    np.testing.assert_allclose(metrics["sparse_categorical_accuracy"], correct / count)
    # Evaluation changes no weight.
    assert_trees_all_close(evaluate.get_model_weights(state), trained, rtol=0, atol=0)


def test_bad_arguments_are_clear_errors(model, parts):
    layer = parts[0]
    sgd = optax.sgd(0.1)
    with pytest.raises(
        ValueError,
        match=r"local_layers \['conv9'\] match no trainable weight.*"
        rf"layers with trainable weights are \[.*'{layer}'",
    ):
        fed_recon(model, sgd, sgd, local_layers="conv9")
    everything = tuple(dict.fromkeys(p.rsplit("/", 1)[0] for p in model.initial_weights.trainable))
    with pytest.raises(ValueError, match="hold every trainable weight, so no weight is global"):
        fed_recon(model, sgd, sgd, local_layers=everything)
    with pytest.raises(ValueError, match=r"local_layers .* chose no trainable weight"):
        fed_recon_eval(model, sgd, local_layers=lambda path: False)
    with pytest.raises(ValueError, match=r"reconstruction_steps must be an integer >= 1; .* 0"):
        fed_recon(model, sgd, sgd, reconstruction_steps=0)
    with pytest.raises(ValueError, match=r"local_init must be one of \('initial', 'zeros'\)"):
        fed_recon(model, sgd, sgd, local_init="random")
    with pytest.raises(ValueError, match="epochs must be 1"):
        build_fed_recon_eval(model, sgd, epochs=2)
    with pytest.raises(TypeError, match="from_keras_model"):
        fed_recon(object(), sgd, sgd)


def test_a_predicate_chooses_the_local_weights_as_names_do(model, parts):
    layer, local, global_ = parts
    trainable = model.initial_weights.trainable
    by_path = split_head(trainable, lambda path: path in local, argument="local_layers")
    assert by_path == split_head(trainable, layer) == (local, global_)
