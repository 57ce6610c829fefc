"""FedNova against its update rule written out by hand (arXiv:2007.07481)."""

import numpy as np
import optax
import optimization_reference as ref
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_fed_nova,
    build_weighted_fed_avg,
    get_algorithm,
)
from fedjax_keras.algorithms._fed_nova import solver_norm
from fedjax_keras.testing import assert_trees_all_close, toy_models


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=61))


def _impulse_norm(steps, lr, rho, mu):
    """||a||_1 by definition: the solver run on a 1-d parameter with a unit gradient at one
    step and zero at the others gives that step's coefficient a_k = (x - y) / lr."""
    total = 0.0
    for k in range(steps):
        y, v = 0.0, 0.0
        for j in range(steps):
            v = rho * v + (1.0 if j == k else 0.0) + mu * y  # gradient + mu (y - x), x = 0
            y = y - lr * v
        total += -y / lr
    return total


@pytest.mark.parametrize("steps", [0, 1, 4, 7])
@pytest.mark.parametrize("rho, mu", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.5), (0.6, 0.3)])
def test_solver_norm_is_the_sum_of_gradient_coefficients(steps, rho, mu):
    lr = 0.2
    norm = float(solver_norm(steps, lr, rho, mu))
    np.testing.assert_allclose(norm, _impulse_norm(steps, lr, rho, mu), rtol=1e-5, atol=1e-6)
    # The paper's closed forms (Section 4).
    if rho == mu == 0.0:
        assert norm == steps
    elif mu == 0.0:
        closed = (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)
        np.testing.assert_allclose(norm, closed, rtol=1e-5, atol=1e-6)
    elif rho == 0.0:
        closed = (1 - (1 - lr * mu) ** steps) / (lr * mu)
        np.testing.assert_allclose(norm, closed, rtol=1e-5, atol=1e-6)


def test_equal_local_steps_is_fed_avg(model):
    """Every client takes 2 steps (6, 5 and 4 examples in batches of 3): FedNova = FedAvg."""
    cohort = make_clients([6, 5, 4], seed=62)
    options = {"batch_size": ref.BATCH, "shuffle": False}
    nova = build_fed_nova(model, 0.1, **options)
    fed_avg = build_weighted_fed_avg(model, optax.sgd(0.1), **options)
    a, b = nova.initialize(0), fed_avg.initialize(0)
    for _ in range(2):
        out = nova.next(a, cohort)
        a, b = out.state, fed_avg.next(b, cohort).state
    assert out.metrics["tau_eff"] == pytest.approx(2.0)
    assert_trees_all_close(a.model, b.model, rtol=1e-5, atol=1e-6)


def test_unequal_steps_with_momentum_proximal_term_and_schedule(model):
    """Steps 2, 1, 3 (and an empty client), SGD momentum 0.5, mu 0.2, lr 0.1 / (1 + round)."""
    cohort = make_clients([5, 2, 0, 9], seed=63)
    rho, mu = 0.5, 0.2
    schedule = lambda round_num: 0.1 / (1.0 + round_num)  # noqa: E731
    process = build_fed_nova(
        model, schedule, momentum=rho, mu=mu, batch_size=ref.BATCH, shuffle=False
    )
    state = process.initialize(0)
    nt = model.initial_weights.non_trainable
    x = ref.as64(model.initial_weights.trainable)
    for round_num in range(2):
        out = process.next(state, cohort)
        state = out.state
        lr = schedule(round_num)
        normalised, norms, sizes = [], [], []
        for (_, client), n in zip(cohort, cohort.client_sizes):
            if not n:
                continue
            parts = ref.batches(client)
            y, v = dict(x), {k: np.zeros_like(a) for k, a in x.items()}
            for batch in parts:
                g = ref.gradient(model, y, nt, batch)
                v = {k: rho * v[k] + g[k] + mu * (y[k] - x[k]) for k in y}
                y = {k: y[k] - lr * v[k] for k in y}
            norm = _impulse_norm(len(parts), lr, rho, mu)
            normalised.append({k: (y[k] - x[k]) / norm for k in y})
            norms.append(norm)
            sizes.append(int(n))
        tau_eff = float(np.average(norms, weights=sizes))
        x = ref.add(x, ref.mean(normalised, sizes), tau_eff)
        assert out.metrics["tau_eff"] == pytest.approx(tau_eff, rel=1e-5)
        assert_trees_all_close(state.model.trainable, x, rtol=1e-4, atol=1e-5)


def test_bad_options_are_clear_errors(model):
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0.0, 1.0\)"):
        build_fed_nova(model, 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="mu must be a number >= 0.0"):
        build_fed_nova(model, 0.1, mu=-1.0)


def test_registry_entry_improves_on_leaf():
    data, model = ref.leaf_task()
    entry = get_algorithm("fednova")
    assert entry.options == {"momentum": 0.0, "mu": 0.0}
    settings = AlgorithmSettings(0.05, None, data.num_clients, entry.options)
    process = entry.make(model, settings, **ref.LEAF_ENGINE)
    before = ref.population_loss(model, data, model.initial_weights)
    after = ref.population_loss(model, data, ref.train_rounds(process, data).model)
    assert after < 0.8 * before, (before, after)
