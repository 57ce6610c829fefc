"""The TFF-named builders: made from their factories, with the signatures they were published with.

`process_builder` derives each builder's signature from its factory's; these
tests pin what users call: the positional parameters in order, the keyword-only
ones, the defaults that differ from the factory's, the docstrings, and the
errors for arguments that belong nowhere.
"""

import inspect

import optax
import pytest
from engine_reference import wrap

from fedjax_keras import algorithms as alg
from fedjax_keras.algorithms import ClientWeighting, FederatedProcess, process_builder
from fedjax_keras.testing import toy_models

# builder (less "build_") -> (positional parameters in order, keyword-only parameters);
# every builder also takes **engine_options. As published before the builders were derived.
PUBLISHED = {
    "lora_fed_avg": (
        "keras_model dummy_batch loss",
        "aggregator alpha client_learning_rate_schedule client_optimizer layer_names metrics"
        " rank server_optimizer",
    ),
    "agnostic_fed_avg": (
        "model client_optimizer server_optimizer",
        "aggregator domain_fn domain_learning_rate domain_update initial_domain_weights"
        " num_domains",
    ),
    "apfl": (
        "model client_learning_rate server_optimizer",
        "aggregator alpha alpha_learning_rate population_size weighting",
    ),
    "ditto": (
        "model client_optimizer server_optimizer",
        "aggregator lam personal_optimizer population_size weighting",
    ),
    "fed_adagrad": (
        "model client_optimizer server_learning_rate",
        "aggregator beta1 client_learning_rate_schedule non_trainable tau weighting",
    ),
    "fed_adam": (
        "model client_optimizer server_learning_rate",
        "aggregator beta1 beta2 client_learning_rate_schedule non_trainable tau weighting",
    ),
    "fed_buff": (
        "model client_optimizer server_optimizer",
        "aggregator client_learning_rate_schedule max_staleness staleness_exponent"
        " staleness_probs weighting",
    ),
    "fed_dyn": (
        "model client_optimizer server_optimizer",
        "aggregator alpha client_learning_rate_schedule population_size weighting",
    ),
    "fed_eval": ("model", "per_client percentiles"),
    "fed_kmeans": (
        "num_clusters data_shape",
        "aggregator initial_centroids random_seed",
    ),
    "fed_nova": (
        "model client_learning_rate server_optimizer",
        "aggregator momentum mu weighting",
    ),
    "fed_per": (
        "model client_optimizer server_optimizer",
        "aggregator head_layers population_size weighting",
    ),
    "fed_prox": (
        "model client_optimizer server_optimizer",
        "aggregator client_learning_rate_schedule mu non_trainable weighting",
    ),
    "fed_recon": (
        "model client_optimizer reconstruction_optimizer server_optimizer",
        "aggregator local_init local_layers reconstruction_steps weighting",
    ),
    "fed_recon_eval": (
        "model reconstruction_optimizer",
        "local_init local_layers reconstruction_steps",
    ),
    "fed_rep": (
        "model client_optimizer server_optimizer",
        "aggregator head_layers head_steps population_size weighting",
    ),
    "fed_sgd": ("model server_optimizer", "aggregator weighting"),
    "fed_yogi": (
        "model client_optimizer server_learning_rate",
        "aggregator beta1 beta2 client_learning_rate_schedule non_trainable tau weighting",
    ),
    "hyp_cluster": (
        "model client_optimizer server_optimizer",
        "aggregator cluster_seed init_noise initial_clusters num_clusters",
    ),
    "mime": ("model base_optimizer server_optimizer", "aggregator control_variate weighting"),
    "mime_lite": ("model base_optimizer server_optimizer", "aggregator weighting"),
    "personalization_eval": ("model fine_tune_optimizer", "fine_tune_steps percentiles"),
    "pfedme": (
        "model client_learning_rate server_optimizer",
        "aggregator inner_steps lam personal_learning_rate weighting",
    ),
    "q_ffl": (
        "model client_learning_rate server_optimizer",
        "aggregator lipschitz q",
    ),
    "scaffold": (
        "model client_learning_rate server_optimizer",
        "aggregator population_size weighting",
    ),
    "unweighted_fed_avg": (
        "model client_optimizer server_optimizer",
        "aggregator client_learning_rate_schedule non_trainable",
    ),
    "weighted_fed_avg": (
        "model client_optimizer server_optimizer",
        "aggregator client_learning_rate_schedule non_trainable",
    ),
}


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_builder_keeps_its_published_parameters(name):
    parameters = inspect.signature(getattr(alg, "build_" + name)).parameters.values()
    kinds = inspect.Parameter
    positional = " ".join(p.name for p in parameters if p.kind is kinds.POSITIONAL_OR_KEYWORD)
    keyword_only = " ".join(sorted(p.name for p in parameters if p.kind is kinds.KEYWORD_ONLY))
    assert (positional, keyword_only) == PUBLISHED[name]
    assert [p.name for p in parameters if p.kind is kinds.VAR_KEYWORD] == ["engine_options"]


def test_no_builder_is_left_unpinned():
    builders = {name[len("build_") :] for name in dir(alg) if name.startswith("build_")}
    assert builders == set(PUBLISHED)


def test_defaults_the_builders_change_and_the_ones_they_inherit():
    adagrad = inspect.signature(alg.build_fed_adagrad).parameters
    adam = inspect.signature(alg.build_fed_adam).parameters
    assert adagrad["server_learning_rate"].default == 0.1
    assert adam["server_learning_rate"].default == 0.01
    assert adam["beta2"].default == 0.99 and adam["tau"].default == 1e-3
    prox = inspect.signature(alg.build_fed_prox).parameters
    assert prox["mu"].default is inspect.Parameter.empty  # still required
    assert prox["weighting"].default == ClientWeighting.NUM_EXAMPLES
    assert inspect.signature(alg.build_fed_dyn).parameters["weighting"].default == (
        ClientWeighting.UNIFORM
    )


def test_builders_keep_their_own_docstrings_and_names():
    assert alg.build_fed_prox.__name__ == "build_fed_prox"
    assert alg.build_fed_prox.__doc__.startswith("FedProx with proximal strength")
    assert "arXiv:2003.00295" in alg.build_fed_yogi.__doc__
    assert inspect.signature(alg.build_fed_prox).return_annotation is FederatedProcess


def test_a_builder_is_the_process_of_its_factory(model):
    process = alg.build_fed_adagrad(model, optax.sgd(0.1), beta1=0.0, batch_size=3, epochs=2)
    assert process.algorithm.name == "fed_adagrad"
    assert (process.options.batch_size, process.options.epochs) == (3, 2)
    ditto = alg.build_ditto(model, optax.sgd(0.1), lam=0.1, population_size=7)
    assert ditto.options.population_size == 7
    uniform = alg.build_unweighted_fed_avg(model, optax.sgd(0.1))
    assert uniform.algorithm.name == "unweighted_fed_avg"


def test_a_missing_argument_names_the_builder(model):
    with pytest.raises(TypeError, match=r"build_fed_prox\(\): missing a required argument: 'mu'"):
        alg.build_fed_prox(model, optax.sgd(0.1))


def test_an_argument_the_builder_fixes_or_nobody_takes_is_refused(model):
    # The weighted builder fixes the weighting: passing one is an unknown engine option.
    with pytest.raises(TypeError, match="weighting"):
        alg.build_weighted_fed_avg(model, optax.sgd(0.1), weighting="uniform")
    with pytest.raises(TypeError, match="bach_size"):
        alg.build_fed_prox(model, optax.sgd(0.1), mu=0.1, bach_size=3)


def test_process_builder_refuses_parameters_its_factory_lacks():
    with pytest.raises(ValueError, match=r"fed_prox has no parameters \['lr'\]"):
        process_builder(alg.fed_prox, fixed={"lr": 0.1})


def test_a_builder_without_an_args_section_gets_one_naming_its_factory():
    doc = alg.build_q_ffl.__doc__
    names = "model, client_learning_rate, server_optimizer, q, lipschitz, aggregator"
    assert f"Args:\n  {names}: as in `q_ffl`.\n  **engine_options: see" in doc
    # Before Returns, as Google style orders them; a hand-written section is kept as it is.
    assert doc.index("Args:") < doc.index("Returns:")
    assert alg.build_weighted_fed_avg.__doc__.count("Args:") == 1
    assert "client_learning_rate_schedule: None, or" in alg.build_weighted_fed_avg.__doc__
