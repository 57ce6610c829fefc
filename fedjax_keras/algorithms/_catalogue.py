"""The built-in algorithms of the registry, in the order the CLI and docs/algorithms.md list them.

One `AlgorithmEntry` per ``--algorithm`` name: how the command line's
settings (client and server learning rates, the population size, named
options) become a builder call, what the algorithm does and its paper.
Importing this module registers them (``fedjax_keras.algorithms`` does); the
algorithm modules themselves know nothing of the registry.
"""

import optax

from fedjax_keras.algorithms._agnostic_fed_avg import build_agnostic_fed_avg
from fedjax_keras.algorithms._apfl import build_apfl
from fedjax_keras.algorithms._ditto import build_ditto
from fedjax_keras.algorithms._fed_avg import build_unweighted_fed_avg, build_weighted_fed_avg
from fedjax_keras.algorithms._fed_buff import build_fed_buff
from fedjax_keras.algorithms._fed_dyn import build_fed_dyn
from fedjax_keras.algorithms._fed_nova import build_fed_nova
from fedjax_keras.algorithms._fed_opt import build_fed_adagrad, build_fed_adam, build_fed_yogi
from fedjax_keras.algorithms._fed_prox import build_fed_prox
from fedjax_keras.algorithms._fed_recon import build_fed_recon
from fedjax_keras.algorithms._fed_rep import build_fed_per, build_fed_rep
from fedjax_keras.algorithms._fed_sgd import build_fed_sgd
from fedjax_keras.algorithms._hyp_cluster import build_hyp_cluster
from fedjax_keras.algorithms._mime import build_mime, build_mime_lite, paper_momentum
from fedjax_keras.algorithms._pfedme import build_pfedme
from fedjax_keras.algorithms._q_ffl import build_q_ffl
from fedjax_keras.algorithms._registry import AlgorithmEntry, register
from fedjax_keras.algorithms._scaffold import build_scaffold


def _client_sgd(settings):
    return optax.sgd(settings.client_lr)


def _client_rate(settings):
    # For the algorithms that run their own local SGD from a learning rate.
    return settings.client_lr


def _sgd_make(build, options=None, *, client=_client_sgd, per_client_state=False):
    """``make`` for ``build(model, client(s), optax.sgd(server lr), **options(s), **engine)``.

    Args:
      build: the public builder.
      options: ``settings -> keyword arguments`` from the entry's named options.
      client: ``settings -> the builder's second argument`` (default
        ``optax.sgd(client_lr)``; `_client_rate` for a learning rate).
      per_client_state: pass ``population_size`` (the algorithm keeps a row per client).
    """

    def make(model, settings, **engine):
        extra = {} if options is None else dict(options(settings))
        if per_client_state:
            extra["population_size"] = settings.population_size
        server = optax.sgd(settings.server_rate(1.0))
        return build(model, client(settings), server, **extra, **engine)

    return make


def _fed_opt_make(build, default_lr):
    # Reddi et al. (arXiv:2003.00295): the paper's rule and defaults (_fed_opt.py);
    # the options are beta1, beta2 (not for Adagrad) and tau.
    def make(model, settings, **engine):
        options = {name: float(value) for name, value in settings.options.items()}
        rate = settings.server_rate(default_lr)
        return build(model, optax.sgd(settings.client_lr), rate, **options, **engine)

    return make


def _fed_opt_entry(kind, build, server_rule, default_lr, options):
    """The entry of FedAdam, FedYogi or FedAdagrad: alike but for the server's rule."""
    return AlgorithmEntry(
        f"fed{kind}",
        f"build_fed_{kind}",
        f"FedOpt: the paper's {server_rule}",
        _REDDI,
        _fed_opt_make(build, default_lr),
        default_server_lr=default_lr,
        options=dict(options),
    )


def _fed_sgd_make(model, settings, **engine):
    return build_fed_sgd(model, optax.sgd(settings.server_rate(0.1)), **engine)


def _mime_client(settings):
    # The paper's damped momentum (m <- (1 - beta) g + beta m): optax's undamped
    # sgd(momentum=0.9) made every frozen-statistics local step about 10x the client rate.
    return paper_momentum(settings.client_lr, float(settings.options["momentum"]))


def _head_options(settings):
    options = {"head_layers": settings.options["head_layers"] or None}
    if "head_steps" in settings.options:
        options["head_steps"] = settings.options["head_steps"]
    return options


def _fed_recon_make(model, settings, **engine):
    # Both local phases run SGD: the global weights at client_lr, the local ones at the
    # option reconstruction_lr (0: client_lr).
    options = settings.options
    rate = float(options["reconstruction_lr"]) or settings.client_lr
    return build_fed_recon(
        model,
        optax.sgd(settings.client_lr),
        optax.sgd(rate),
        optax.sgd(settings.server_rate(1.0)),
        local_layers=options["local_layers"] or None,
        reconstruction_steps=options["reconstruction_steps"],
        **engine,
    )


_FEDAVG = "McMahan et al. 2017, arXiv:1602.05629"
_REDDI = "Reddi et al. 2021, arXiv:2003.00295"
_ADAPTIVE_OPTIONS = {"beta1": 0.9, "beta2": 0.99, "tau": 1e-3}

BUILTIN = (
    AlgorithmEntry(
        "fedavg",
        "build_weighted_fed_avg",
        "FedAvg, client deltas weighted by example count",
        _FEDAVG,
        _sgd_make(build_weighted_fed_avg),
    ),
    AlgorithmEntry(
        "fedavg_unweighted",
        "build_unweighted_fed_avg",
        "FedAvg, every client with data weighs 1",
        _FEDAVG,
        _sgd_make(build_unweighted_fed_avg),
    ),
    AlgorithmEntry(
        "fedprox",
        "build_fed_prox",
        "local loss plus mu/2 ||w - w_server||^2; mu=0 is FedAvg",
        "Li et al. 2020, arXiv:1812.06127",
        _sgd_make(build_fed_prox, lambda s: {"mu": s.options["mu"]}),
        options={"mu": 0.01},
    ),
    AlgorithmEntry(
        "fedsgd",
        "build_fed_sgd",
        "one gradient per client at the server weights, averaged, one server step",
        _FEDAVG,
        _fed_sgd_make,
        default_server_lr=0.1,
        epochs_must_be_one=True,
    ),
    AlgorithmEntry(
        "scaffold",
        "build_scaffold",
        "control variates (option II) correct client drift; c_i kept per client",
        "Karimireddy et al. 2020, arXiv:1910.06378",
        _sgd_make(build_scaffold, client=_client_rate, per_client_state=True),
    ),
    _fed_opt_entry(
        "adam",
        build_fed_adam,
        "Adam on the pseudo-gradient (b1 0.9, b2 0.99, tau 1e-3)",
        0.01,
        _ADAPTIVE_OPTIONS,
    ),
    _fed_opt_entry(
        "yogi",
        build_fed_yogi,
        "Yogi on the pseudo-gradient (b1 0.9, b2 0.99, tau 1e-3)",
        0.01,
        _ADAPTIVE_OPTIONS,
    ),
    _fed_opt_entry(
        "adagrad",
        build_fed_adagrad,
        "Adagrad (with momentum b1 0.9) on the pseudo-gradient, tau 1e-3",
        0.1,
        {"beta1": 0.9, "tau": 1e-3},
    ),
    AlgorithmEntry(
        "agnostic_fedavg",
        "build_agnostic_fed_avg",
        "minimax over domain mixtures: FedAvg deltas weighted by the domain weights lambda, "
        "lambda moved toward the domains with the highest loss (domains: the labels)",
        "Mohri et al. 2019, arXiv:1902.00146",
        _sgd_make(
            build_agnostic_fed_avg, lambda s: {"domain_learning_rate": s.options["domain_lr"]}
        ),
        options={"domain_lr": 0.1},
    ),
    AlgorithmEntry(
        "apfl",
        "build_apfl",
        "personal model v_k mixed with the global one as alpha v + (1 - alpha) w; "
        "alpha (option mix) fixed (mix_lr=0) or adapted per client",
        "Deng et al. 2020, arXiv:2003.13461",
        _sgd_make(
            build_apfl,
            lambda s: {"alpha": s.options["mix"], "alpha_learning_rate": s.options["mix_lr"]},
            client=_client_rate,
            per_client_state=True,
        ),
        # Not 'alpha': the command line's --alpha is the synthetic task's heterogeneity.
        options={"mix": 0.25, "mix_lr": 0.0},
    ),
    AlgorithmEntry(
        "ditto",
        "build_ditto",
        "FedAvg plus a personal model per client trained on f_k(v) + lam/2 ||v - w||^2",
        "Li et al. 2021, arXiv:2012.04221",
        _sgd_make(build_ditto, lambda s: {"lam": s.options["lam"]}, per_client_state=True),
        options={"lam": 0.1},
    ),
    AlgorithmEntry(
        "fedbuff",
        "build_fed_buff",
        "simulated buffered async: clients start from stale versions, (1+tau)^-a weighted",
        "Nguyen et al. 2022, arXiv:2106.06639",
        _sgd_make(
            build_fed_buff,
            lambda s: {
                "max_staleness": int(s.options["max_staleness"]),
                "staleness_exponent": float(s.options["staleness_exponent"]),
            },
        ),
        options={"max_staleness": 4, "staleness_exponent": 0.5},
    ),
    AlgorithmEntry(
        "feddyn",
        "build_fed_dyn",
        "local loss - <g_k, w> + alpha/2 ||w - w_server||^2 (g_k per client), server drift h",
        "Acar et al. 2021, arXiv:2111.04263",
        _sgd_make(
            build_fed_dyn, lambda s: {"alpha": float(s.options["alpha"])}, per_client_state=True
        ),
        options={"alpha": 0.01},
    ),
    AlgorithmEntry(
        "fednova",
        "build_fed_nova",
        "normalised averaging: each delta divided by its local steps, rescaled by their mean",
        "Wang et al. 2020, arXiv:2007.07481",
        _sgd_make(
            build_fed_nova,
            lambda s: {"momentum": float(s.options["momentum"]), "mu": float(s.options["mu"])},
            client=_client_rate,
        ),
        options={"momentum": 0.0, "mu": 0.0},
    ),
    AlgorithmEntry(
        "fedrep",
        "build_fed_rep",
        "shared body averaged by the server, personal head per client; local steps train "
        "the head first (head_steps), then the body",
        "Collins et al. 2021, arXiv:2102.07078",
        _sgd_make(build_fed_rep, _head_options, per_client_state=True),
        options={"head_layers": "", "head_steps": 2},
    ),
    AlgorithmEntry(
        "fedper",
        "build_fed_per",
        "shared body averaged by the server, personal head per client; local steps train both",
        "Arivazhagan et al. 2019, arXiv:1912.00818",
        _sgd_make(build_fed_per, _head_options, per_client_state=True),
        options={"head_layers": ""},
    ),
    AlgorithmEntry(
        "fedrecon",
        "build_fed_recon",
        "Federated Reconstruction: per-client layers rebuilt from scratch every round "
        "(reconstruction_steps batches), never sent nor stored; the rest trains the global "
        "layers",
        "Singhal et al. 2021, arXiv:2102.03448",
        _fed_recon_make,
        options={"local_layers": "", "reconstruction_steps": 1, "reconstruction_lr": 0.0},
    ),
    AlgorithmEntry(
        "hypcluster",
        "build_hyp_cluster",
        "k models; each client trains the one with the lowest loss on its first batch; "
        "deltas averaged per cluster",
        "Mansour et al. 2020, arXiv:2002.10619",
        _sgd_make(
            build_hyp_cluster,
            lambda s: {
                "num_clusters": s.options["num_clusters"],
                "init_noise": s.options["init_noise"],
            },
        ),
        options={"num_clusters": 2, "init_noise": 0.1},
    ),
    *(
        AlgorithmEntry(
            build.__name__[len("build_") :],
            build.__name__,
            summary,
            "Karimireddy et al. 2021, arXiv:2008.03606",
            _sgd_make(build, client=_mime_client),
            options={"momentum": 0.9},
        )
        for build, summary in (
            (build_mime, "clients apply the server's frozen momentum plus an SVRG control variate"),
            (
                build_mime_lite,
                "clients apply the server's frozen momentum; the server updates it with full "
                "gradients",
            ),
        )
    ),
    AlgorithmEntry(
        "pfedme",
        "build_pfedme",
        "local model pulled toward K-step solutions of the Moreau envelope "
        "min f_k(theta) + lam/2 ||theta - w_k||^2; server step beta = server lr",
        "Dinh et al. 2020, arXiv:2006.08848",
        _sgd_make(
            build_pfedme,
            lambda s: {
                "lam": s.options["lam"],
                "personal_learning_rate": s.options["personal_lr"],
                "inner_steps": s.options["inner_steps"],
            },
            client=_client_rate,
        ),
        options={"lam": 15.0, "personal_lr": 0.05, "inner_steps": 5},
    ),
    AlgorithmEntry(
        "qffl",
        "build_q_ffl",
        "q-FedAvg: client updates scaled by F_k^q and normalized by the Lipschitz estimate "
        "L = 1/client_lr; q=0 is unweighted FedAvg",
        "Li et al. 2020, arXiv:1905.10497",
        _sgd_make(build_q_ffl, lambda s: {"q": s.options["q"]}, client=_client_rate),
        options={"q": 1.0},
    ),
)

for _entry in BUILTIN:
    register(_entry)
