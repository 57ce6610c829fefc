"""FedRep and FedPer against local SGD on the head and the body written out by hand."""

import keras
import numpy as np
import optax
import pytest
from engine_reference import make_clients, weighted_mean, wrap
from personal_reference import batches_of, sgd

import fedjax_keras as fk
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_fed_per,
    build_fed_rep,
    get_algorithm,
    split_head,
)
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR, HEAD_STEPS = 3, 0.1, 2
SIZES = [12, 5, 0, 9]  # 4, 2, 0 and 3 steps: the second client trains no body


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=41))


@pytest.fixture(scope="module")
def cohort():
    return make_clients(SIZES, seed=42)


@pytest.fixture(scope="module")
def parts(model):
    paths = list(model.initial_weights.trainable)
    output_layer = paths[-1].rsplit("/", 1)[0]
    head = tuple(p for p in paths if p.startswith(output_layer + "/"))
    return output_layer, head, tuple(p for p in paths if p not in head)


def _hand(model, cohort, head, body, head_steps, rounds):
    """(server weights, heads by client) per round; head_steps None is FedPer (joint steps)."""
    server = model.initial_weights
    heads = {cid: {p: server.trainable[p] for p in head} for cid in cohort.client_ids}
    history = []
    for _ in range(rounds):
        deltas, weights = [], []
        for cid, client in cohort:
            batches = batches_of(client, BATCH)
            start = ModelWeights({**server.trainable, **heads[cid]}, server.non_trainable)
            if head_steps is None:
                final, weight = sgd(model, start, batches, LR), len(client["y"])
            else:
                tuned = sgd(model, start, batches[:head_steps], LR, only=head)
                final = sgd(model, tuned, batches[head_steps:], LR, only=body)
                weight = sum(len(b["y"]) for b in batches[head_steps:])
            if len(client["y"]):
                heads[cid] = {p: final.trainable[p] for p in head}
            if weight:
                deltas.append(
                    {p: np.asarray(final.trainable[p] - server.trainable[p]) for p in body}
                )
                weights.append(weight)
        mean = weighted_mean(deltas, weights)
        trainable = {**server.trainable, **{p: server.trainable[p] + mean[p] for p in body}}
        server = ModelWeights(trainable, server.non_trainable)
        history.append((server, dict(heads)))
    return history


@pytest.mark.parametrize("variant", ["fedrep", "fedper"])
def test_two_rounds_equal_head_and_body_sgd_by_hand(model, cohort, parts, variant):
    layer, head, body = parts
    options = {"batch_size": BATCH, "shuffle": False, "runner": "vmap"}
    if variant == "fedrep":
        process = build_fed_rep(
            model, optax.sgd(LR), head_layers=(layer,), head_steps=HEAD_STEPS, **options
        )
    else:
        entry = get_algorithm("fedper")
        settings = AlgorithmSettings(LR, None, cohort.num_clients, {"head_layers": layer})
        process = entry.make(model, settings, **options)
    state = process.initialize(0)
    steps = HEAD_STEPS if variant == "fedrep" else None
    for server, heads in _hand(model, cohort, head, body, steps, 2):
        state = process.next(state, cohort).state
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
        stored = state.client_states.gather(cohort.population_positions)["algorithm"]
        expected = {p: np.stack([heads[cid][p] for cid in cohort.client_ids]) for p in head}
        assert_trees_all_close(stored, expected, rtol=1e-5, atol=1e-6)
    # The server's head is never trained.
    for p in head:
        np.testing.assert_array_equal(state.model.trainable[p], model.initial_weights.trainable[p])


def test_head_layers_name_layers_and_default_to_the_output_layer(model, parts):
    layer, head, body = parts
    trainable = model.initial_weights.trainable
    assert split_head(trainable, None) == (head, body)
    assert split_head(trainable, f" {layer} ") == (head, body)
    first = body[0].rsplit("/", 1)[0]
    with pytest.raises(ValueError, match=r"\['conv9'\] match no trainable weight.*layers"):
        split_head(trainable, ("conv9",))
    with pytest.warns(UserWarning, match="no body is shared, so every client trains its own"):
        assert split_head(trainable, f"{first},{layer}") == (tuple(trainable), ())


def test_a_one_layer_model_is_local_training_with_a_warning():
    """Softmax regression has only a head: each client trains its own, the server stays put."""
    model = wrap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
    cohort = make_clients([5, 4], seed=44)
    with pytest.warns(UserWarning, match="no body is shared"):
        process = build_fed_per(model, optax.sgd(LR), batch_size=BATCH, shuffle=False)
    state = process.next(process.initialize(0), cohort).state
    assert_trees_all_close(state.model, model.initial_weights)
    heads = state.client_states.gather(cohort.population_positions)["algorithm"]
    for position, (_, client) in enumerate(cohort):
        local = sgd(model, model.initial_weights, batches_of(client, BATCH), LR).trainable
        got = {k: np.asarray(v[position]) for k, v in heads.items()}
        assert_trees_all_close(got, local, rtol=1e-5, atol=1e-6)


def test_registry_entry_trains_personal_heads_over_ten_rounds():
    data = fk.data.synthetic_leaf(num_clients=12, seed=3, size_median=30)
    model = wrap(toy_models.mlp(60, 16, 10, seed=43), x_shape=(60,))
    entry = get_algorithm("fedrep")
    settings = AlgorithmSettings(0.05, None, 12, {**entry.options, "head_steps": 2})
    process = entry.make(model, settings, batch_size=10)
    state = process.initialize(0)
    losses = []
    for r in range(10):
        out = process.next(state, data.sample_clients(12, seed=r))
        state = out.state
        losses.append(out.metrics["loss"])
    assert losses[-1] < 0.7 * losses[0]
    assert state.client_states.seen_positions().tolist() == list(range(12))
