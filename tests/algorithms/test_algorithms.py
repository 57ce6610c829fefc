"""Each algorithm against an independent reference: Keras fit, jax.grad, hand loops."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from engine_reference import (
    corrected_sgd,
    delta,
    local_train,
    make_clients,
    server_step,
    sliced_batches,
    weighted_mean,
    wrap,
)

import fedjax_keras
from fedjax_keras.algorithms import (
    build_fed_eval,
    build_fed_prox,
    build_fed_sgd,
    build_scaffold,
    build_unweighted_fed_avg,
    build_weighted_fed_avg,
)
from fedjax_keras.models import ModelWeights
from fedjax_keras.optimizers import from_optax
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH = 3
LR = 0.1
SIZES = [5, 2, 0, 4]  # partial batches and an empty client


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=11))


@pytest.fixture(scope="module")
def cohort():
    return make_clients(SIZES, seed=12)


def _zero(trainable):
    return jax.tree.map(jnp.zeros_like, trainable)


def _hand_client(model, server, client, correction=_zero, lr=LR, epochs=1):
    """(final weights, number of real steps) of unshuffled local SGD, written out by hand."""
    batches = sliced_batches(client["x"], client["y"], BATCH, epochs)
    return corrected_sgd(model, server, batches, lr, correction), len(batches)


def _hand_deltas(model, server, cohort, correction=_zero):
    deltas = [delta(_hand_client(model, server, c, correction)[0], server) for _, c in cohort]
    return deltas, [int(n) for n in cohort.client_sizes]


def _fed_avg(model, **kwargs):
    options = {"batch_size": BATCH, "shuffle": False, "runner": "vmap"}
    return build_weighted_fed_avg(model, optax.sgd(LR), **{**options, **kwargs})


@pytest.fixture(scope="module")
def fed_avg_round(model, cohort):
    process = _fed_avg(model)
    return process.next(process.initialize(0), cohort)


# ----------------------------------------------------------------- FedAvg vs Keras
@pytest.mark.parametrize(
    "client_optimizer, keras_optimizer",
    [
        (optax.sgd(0.1), lambda: keras.optimizers.SGD(0.1)),
        (lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.Adam(0.01)),
    ],
    ids=["optax_sgd", "keras_adam_factory"],
)
def test_one_client_fed_avg_equals_keras_fit(client_optimizer, keras_optimizer):
    """One client, server SGD(1.0), no shuffle: FedAvg is Keras fit (partial batch, 2 epochs)."""
    model = wrap(toy_models.mlp(seed=13))
    cohort = make_clients([7], seed=14)
    process = build_weighted_fed_avg(
        model, client_optimizer, optax.sgd(1.0), batch_size=BATCH, epochs=2, shuffle=False
    )
    state = process.next(process.initialize(0), cohort).state

    net = model.to_keras(model.initial_weights)
    net.compile(
        optimizer=keras_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    data = cohort.client(0)
    net.fit(data["x"], data["y"], batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    ours = model.to_keras(state.model)
    for a, b in zip(ours.weights, net.weights):
        assert a.path == b.path
        np.testing.assert_allclose(
            np.asarray(a.value), np.asarray(b.value), rtol=1e-5, atol=1e-6, err_msg=a.path
        )


# ----------------------------------------------------------------- weighting
def test_weighted_fed_avg_is_example_weighted_mean(model, cohort, fed_avg_round):
    server = model.initial_weights
    deltas, sizes = _hand_deltas(model, server, cohort)
    keep = [i for i, n in enumerate(sizes) if n]
    mean = weighted_mean([deltas[i] for i in keep], [sizes[i] for i in keep])
    expected = {k: server.trainable[k] + mean[k] for k in mean}
    assert_trees_all_close(fed_avg_round.state.model.trainable, expected, rtol=1e-5, atol=1e-6)
    assert fed_avg_round.metrics["num_examples"] == sum(SIZES)


def test_unweighted_fed_avg_is_uniform_mean_over_clients_with_data(model, cohort):
    process = build_unweighted_fed_avg(model, optax.sgd(LR), batch_size=BATCH, shuffle=False)
    state = process.next(process.initialize(0), cohort).state
    server = model.initial_weights
    deltas, sizes = _hand_deltas(model, server, cohort)
    mean = weighted_mean([d for d, n in zip(deltas, sizes) if n], [1.0] * 3)
    expected = {k: server.trainable[k] + mean[k] for k in mean}
    assert_trees_all_close(state.model.trainable, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- FedSGD
def test_fed_sgd_is_one_full_batch_gradient_step(model, cohort):
    process = build_fed_sgd(model, optax.sgd(0.5), batch_size=BATCH)
    out = process.next(process.initialize(0), cohort)
    x = np.concatenate([c["x"] for _, c in cohort])
    y = np.concatenate([c["y"] for _, c in cohort])
    w = model.initial_weights

    def full_loss(trainable):
        logits = model.apply(ModelWeights(trainable, w.non_trainable), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(full_loss)(w.trainable)
    expected = {k: w.trainable[k] - 0.5 * grads[k] for k in grads}
    assert_trees_all_close(out.state.model.trainable, expected, rtol=1e-5, atol=1e-6)
    assert out.metrics["loss"] == pytest.approx(float(full_loss(w.trainable)), rel=1e-5)


# ----------------------------------------------------------------- FedProx
def test_fed_prox_with_zero_mu_is_fed_avg(model, cohort, fed_avg_round):
    process = build_fed_prox(model, optax.sgd(LR), mu=0.0, batch_size=BATCH, shuffle=False)
    state = process.next(process.initialize(0), cohort).state
    assert_trees_all_close(state.model, fed_avg_round.state.model, rtol=1e-6, atol=1e-7)


def test_fed_prox_matches_proximal_sgd_and_stays_closer(model, cohort, fed_avg_round):
    mu = 2.0
    process = build_fed_prox(model, optax.sgd(LR), mu=mu, batch_size=BATCH, shuffle=False, epochs=3)
    state = process.next(process.initialize(0), cohort).state
    server = model.initial_weights
    proximal = lambda t: {k: mu * (t[k] - server.trainable[k]) for k in t}
    deltas, sizes = [], []
    for _, client in cohort:
        if len(client["y"]):
            final, _ = _hand_client(model, server, client, proximal, epochs=3)
            deltas.append(delta(final, server))
            sizes.append(len(client["y"]))
    mean = weighted_mean(deltas, sizes)
    expected = {k: server.trainable[k] + mean[k] for k in mean}
    assert_trees_all_close(state.model.trainable, expected, rtol=1e-5, atol=1e-6)

    # FedAvg (mu = 0) on the same data, by the same hand loop, moves further.
    plain_deltas = [
        delta(_hand_client(model, server, client, epochs=3)[0], server)
        for _, client in cohort
        if len(client["y"])
    ]
    plain_mean = weighted_mean(plain_deltas, sizes)

    def distance(mean_delta):
        return sum(float(np.sum(d**2)) for d in mean_delta.values())

    moved = {k: np.asarray(state.model.trainable[k]) - server.trainable[k] for k in mean}
    assert distance(moved) < 0.9 * distance(plain_mean)


# ----------------------------------------------------------------- FedOpt
def test_server_adam_on_the_pseudo_gradient(model, cohort):
    adam = optax.adam(0.05)
    process = _fed_avg(model, server_optimizer=adam)
    state = process.initialize(0)
    server, opt_state = model.initial_weights, adam.init(model.initial_weights.trainable)
    for _ in range(2):
        state = process.next(state, cohort).state
        deltas, sizes = _hand_deltas(model, server, cohort)
        keep = [i for i, n in enumerate(sizes) if n]
        mean = weighted_mean([deltas[i] for i in keep], [sizes[i] for i in keep])
        trainable, opt_state = server_step(adam, server.trainable, opt_state, mean)
        server = ModelWeights(trainable, server.non_trainable)
        assert_trees_all_close(state.model.trainable, server.trainable, rtol=1e-5, atol=1e-6)
    assert_trees_all_close(state.optimizer_state, opt_state, rtol=1e-5, atol=1e-7)


def test_keras_optimizers_and_factories_as_client_and_server_optimizers(model, cohort):
    """Client: a Keras SGD object. Server: a zero-arg factory of a Keras SGD with momentum."""
    process = build_weighted_fed_avg(
        model,
        keras.optimizers.SGD(LR),
        lambda: keras.optimizers.SGD(0.5, momentum=0.9),
        batch_size=BATCH,
        shuffle=False,
    )
    momentum = optax.sgd(0.5, momentum=0.9)  # the same update, written by optax
    state = process.initialize(0)
    server, opt_state = model.initial_weights, momentum.init(model.initial_weights.trainable)
    for _ in range(2):
        state = process.next(state, cohort).state
        deltas, sizes = _hand_deltas(model, server, cohort)
        keep = [i for i, n in enumerate(sizes) if n]
        mean = weighted_mean([deltas[i] for i in keep], [sizes[i] for i in keep])
        trainable, opt_state = server_step(momentum, server.trainable, opt_state, mean)
        server = ModelWeights(trainable, server.non_trainable)
    assert_trees_all_close(state.model.trainable, server.trainable, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- SCAFFOLD
def _hand_scaffold(model, rounds, cohort, lr):
    """Option II of Karimireddy et al. (arXiv:1910.06378), N = the cohort's clients."""
    server = model.initial_weights
    c = _zero(server.trainable)
    c_i = {cid: _zero(server.trainable) for cid in cohort.client_ids}
    history = []
    for _ in range(rounds):
        deltas, sizes, control_deltas = [], [], []
        for cid, client in cohort:
            ci = c_i[cid]
            correction = lambda t, c=c, ci=ci: {k: c[k] - ci[k] for k in t}
            final, steps = _hand_client(model, server, client, correction, lr=lr)
            new_ci = {
                k: ci[k] - c[k] + (server.trainable[k] - final.trainable[k]) / (steps * lr)
                for k in ci
            }
            control_deltas.append({k: new_ci[k] - ci[k] for k in ci})
            c_i[cid] = new_ci
            deltas.append(delta(final, server))
            sizes.append(len(client["y"]))
        mean = weighted_mean(deltas, sizes)
        server = ModelWeights(
            {k: server.trainable[k] + mean[k] for k in mean}, server.non_trainable
        )
        c = {k: c[k] + sum(d[k] for d in control_deltas) / len(control_deltas) for k in c}
        history.append((server, c, dict(c_i)))
    return history


@pytest.mark.parametrize("runner", ["vmap", "unroll"])
def test_scaffold_control_variates_by_hand(model, runner):
    # 2, 3 and 1 local steps; with chunks of 4 there is a dummy client, and
    # 'unroll' runs a full group of 2 and a short one.
    cohort = make_clients([5, 7, 2], seed=15)
    process = build_scaffold(
        model, 0.2, batch_size=BATCH, shuffle=False, chunk_size=4, runner=runner
    )
    state = process.initialize(0)
    for server, c, c_i in _hand_scaffold(model, 2, cohort, 0.2):
        state = process.next(state, cohort).state
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
        assert_trees_all_close(state.algorithm_state, c, rtol=1e-4, atol=1e-5)
        ids = list(cohort.client_ids)
        stored = state.client_states.gather(cohort.population_positions)["algorithm"]
        expected = jax.tree.map(lambda *rows: np.stack(rows), *[c_i[cid] for cid in ids])
        assert_trees_all_close(stored, expected, rtol=1e-4, atol=1e-5)
    assert state.client_states.seen_positions().tolist() == [0, 1, 2]
    assert any(np.abs(leaf).max() > 1e-3 for leaf in jax.tree.leaves(state.algorithm_state))


def test_scaffold_without_client_drift_is_fed_avg(model):
    """Identical clients: c_i == c after every round, so the correction is zero."""
    one = make_clients([6], seed=16).client(0)
    cohort = fedjax_keras.FederatedData.from_client_dict({"a": one, "b": one})
    process = build_scaffold(model, LR, batch_size=BATCH, shuffle=False)
    state = process.initialize(0)
    server = model.initial_weights
    for _ in range(3):
        state = process.next(state, cohort).state
        final, _ = _hand_client(model, server, one)
        server = final
    assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- non-trainable policies
@pytest.fixture(scope="module")
def bn_model():
    return wrap(toy_models.mlp(batch_norm=True, seed=17))


# Full batches only: BatchNormalization's batch statistics are not padding-invariant
# (docs/models.md), so a partial batch would differ from the short-batch reference.
BN_SIZES = [6, 3, 9]


def _bn_clients(model, server_trainable, starts, cohort):
    """Each client's final weights (trained with Model.train_step), from its start stats."""
    sgd = from_optax(optax.sgd(LR))
    return [
        local_train(
            model, ModelWeights(server_trainable, start), sliced_batches(c["x"], c["y"], BATCH), sgd
        )
        for start, (_, c) in zip(starts, cohort)
    ]


def _trainable_mean(finals, server, sizes):
    mean = weighted_mean([delta(f, server) for f in finals], sizes)
    return {k: server.trainable[k] + mean[k] for k in mean}


@pytest.mark.parametrize("policy", ["broadcast", "average"])
def test_non_trainable_broadcast_and_average(bn_model, policy):
    cohort = make_clients(BN_SIZES, seed=18)
    process = _fed_avg(bn_model, non_trainable=policy)
    state = process.next(process.initialize(0), cohort).state
    server = bn_model.initial_weights
    finals = _bn_clients(bn_model, server.trainable, [server.non_trainable] * 3, cohort)
    assert_trees_all_close(
        state.model.trainable, _trainable_mean(finals, server, BN_SIZES), rtol=1e-5, atol=1e-6
    )
    if policy == "broadcast":
        expected = server.non_trainable
    else:
        expected = weighted_mean([f.non_trainable for f in finals], BN_SIZES)
    assert_trees_all_close(state.model.non_trainable, expected, rtol=1e-5, atol=1e-6)
    assert state.client_states is None


def test_non_trainable_per_client_keeps_each_clients_stats(bn_model):
    cohort = make_clients(BN_SIZES, seed=19)
    process = _fed_avg(bn_model, non_trainable="per_client")
    state = process.initialize(0)
    server = bn_model.initial_weights
    starts = [server.non_trainable] * 3
    for _ in range(2):
        state = process.next(state, cohort).state
        finals = _bn_clients(bn_model, server.trainable, starts, cohort)
        server = ModelWeights(_trainable_mean(finals, server, BN_SIZES), server.non_trainable)
        starts = [f.non_trainable for f in finals]
        stored = state.client_states.gather(cohort.population_positions)["algorithm"]
        expected = jax.tree.map(lambda *rows: np.stack(rows), *starts)
        assert_trees_all_close(stored, expected, rtol=1e-5, atol=1e-6)
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- evaluation
def test_fed_eval_sums_then_finalizes(model, cohort, fed_avg_round):
    process = build_fed_eval(model, batch_size=BATCH, chunk_size=2)
    weights = fed_avg_round.state.model
    state = process.set_model_weights(process.initialize(), weights)
    out = process.next(state, cohort)
    x = np.concatenate([c["x"] for _, c in cohort])
    y = np.concatenate([c["y"] for _, c in cohort])
    logits = model.apply(weights, x)
    accuracy = float(np.mean(np.argmax(logits, -1) == y))
    loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
    assert out.metrics["sparse_categorical_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert out.metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert out.metrics["num_examples"] == sum(SIZES)
    assert_trees_all_close(out.state.model, weights, rtol=0, atol=0)


def test_per_client_default_follows_set_model_weights(bn_model):
    """FedBN from pre-trained weights: clients not seen yet start from the new statistics."""
    process = _fed_avg(bn_model, non_trainable="per_client", population_size=2)
    state = process.initialize(0)
    seen_row = jax.tree.map(lambda a: np.asarray(a)[None] + 5.0, state.model.non_trainable)
    state = state.replace(
        client_states=state.client_states.scatter(
            np.array([1]), {"algorithm": seen_row, "aggregator": ()}
        )
    )
    pretrained = ModelWeights(
        state.model.trainable,
        jax.tree.map(lambda a: np.asarray(a) + 1.0, state.model.non_trainable),
    )
    state = process.set_model_weights(state, pretrained)
    rows = state.client_states.gather(np.array([0, 1]))["algorithm"]
    assert_trees_all_close(jax.tree.map(lambda a: a[0], rows), pretrained.non_trainable)
    assert_trees_all_close(
        jax.tree.map(lambda a: a[1], rows),
        jax.tree.map(lambda a: a + 4.0, pretrained.non_trainable),
    )


# ----------------------------------------------------------------- padded steps, optimizer state
@pytest.mark.parametrize("runner", ["vmap", "sequential"])
@pytest.mark.parametrize(
    "client_optimizer, keras_optimizer",
    [
        (optax.sgd(0.1, momentum=0.9), lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
        (lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.Adam(0.01)),
    ],
    ids=["momentum", "adam"],
)
def test_uneven_clients_with_stateful_client_optimizers_equal_keras_fit(
    runner, client_optimizer, keras_optimizer
):
    """Clients of 7, 2 and 5 examples share a chunk (3 steps): the short clients' padded
    steps must leave momentum and Adam moments alone, as Keras fit on each client does."""
    model = wrap(toy_models.mlp(seed=71))
    sizes = [7, 2, 5]
    cohort = make_clients(sizes, seed=72)
    process = build_weighted_fed_avg(
        model,
        client_optimizer,
        optax.sgd(1.0),
        batch_size=BATCH,
        shuffle=False,
        chunk_size=3,
        step_buckets="exact",
        runner=runner,
    )
    state = process.next(process.initialize(0), cohort).state
    server = model.initial_weights
    deltas = []
    for _, client in cohort:
        net = model.to_keras(server)
        net.compile(
            optimizer=keras_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        net.fit(client["x"], client["y"], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        final = {w.path: np.asarray(w.value) for w in net.weights}
        ours = model.to_keras(server)
        deltas.append(
            {k: final[w.path] - np.asarray(w.value) for k, w in zip(server.trainable, ours.weights)}
        )
    mean = weighted_mean(deltas, sizes)
    expected = {k: np.asarray(server.trainable[k]) + mean[k] for k in mean}
    assert_trees_all_close(state.model.trainable, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- SCAFFOLD, partial participation
def test_scaffold_divides_control_deltas_by_the_population_not_the_cohort(model):
    """Population N = 5, cohorts of 2: c moves by sum(c_i+ - c_i) / 5 (Karimireddy et al.)."""
    data = make_clients([5, 7, 2, 4, 6], seed=73)
    cohorts = [data.subset(p) for p in ([0, 3], [1, 3], [4, 0])]
    lr = 0.2
    process = build_scaffold(model, lr, batch_size=BATCH, shuffle=False, population_size=5)
    state = process.initialize(0)
    server = model.initial_weights
    c = _zero(server.trainable)
    c_i = [_zero(server.trainable) for _ in range(5)]
    for cohort in cohorts:
        state = process.next(state, cohort).state
        deltas, sizes, control_deltas = [], [], []
        for position, (_, client) in zip(cohort.population_positions, cohort):
            ci = c_i[position]
            correction = lambda t, c=c, ci=ci: {k: c[k] - ci[k] for k in t}
            final, steps = _hand_client(model, server, client, correction, lr=lr)
            new_ci = {
                k: ci[k] - c[k] + (server.trainable[k] - final.trainable[k]) / (steps * lr)
                for k in ci
            }
            control_deltas.append({k: new_ci[k] - ci[k] for k in ci})
            c_i[position] = new_ci
            deltas.append(delta(final, server))
            sizes.append(len(client["y"]))
        mean = weighted_mean(deltas, sizes)
        server = ModelWeights(
            {k: server.trainable[k] + mean[k] for k in mean}, server.non_trainable
        )
        c = {k: c[k] + sum(d[k] for d in control_deltas) / 5 for k in c}
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
        assert_trees_all_close(state.algorithm_state, c, rtol=1e-4, atol=1e-5)
    stored = state.client_states.gather(np.arange(5))["algorithm"]
    expected = jax.tree.map(lambda *rows: np.stack(rows), *c_i)
    assert_trees_all_close(stored, expected, rtol=1e-4, atol=1e-5)
    assert state.client_states.seen_positions().tolist() == [0, 1, 3, 4]


def test_fed_eval_per_client_reports_each_clients_metrics_in_cohort_order(model, cohort):
    """Chunks of 3 sorted by step count: the reports come back in cohort order."""
    process = build_fed_eval(model, per_client=True, batch_size=2, chunk_size=3)
    weights = model.initial_weights
    out = process.next(process.set_model_weights(process.initialize(), weights), cohort)
    for position, (_, client) in enumerate(cohort):
        n = len(client["y"])
        assert out.metrics["clients/num_examples"][position] == n
        if n == 0:
            assert np.isnan(out.metrics["clients/loss"][position])
            continue
        logits = model.apply(weights, client["x"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, client["y"]).mean()
        accuracy = float(np.mean(np.argmax(logits, -1) == client["y"]))
        assert out.metrics["clients/loss"][position] == pytest.approx(float(loss), rel=1e-5)
        got = out.metrics["clients/sparse_categorical_accuracy"][position]
        assert got == pytest.approx(accuracy, abs=1e-6)
    assert out.metrics["clients/kept"].tolist() == [n > 0 for n in SIZES]
