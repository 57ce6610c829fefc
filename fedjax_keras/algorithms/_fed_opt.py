"""FedAdam, FedYogi, FedAdagrad: adaptive server optimizers, as written in the paper.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295,
Algorithm 2. Clients run FedAvg's local training; the server treats the
aggregated delta ``D_t`` (the weighted mean of ``w_k - w``) as a
pseudo-gradient and, with ``m_{-1} = 0`` and ``v_{-1} = tau^2``:

    m_t = beta1 * m_{t-1} + (1 - beta1) * D_t
    v_t = v_{t-1} + D_t^2                                         (FedAdagrad)
    v_t = v_{t-1} - (1 - beta2) * D_t^2 * sign(v_{t-1} - D_t^2)    (FedYogi)
    v_t = beta2 * v_{t-1} + (1 - beta2) * D_t^2                    (FedAdam)
    w_{t+1} = w_t + lr * m_t / (sqrt(v_t) + tau)

Unlike ``optax.adam`` / ``optax.yogi`` / ``optax.adagrad`` there is no bias
correction and FedAdagrad has the momentum ``beta1`` too: the paper's rule,
with its defaults ``beta1 = 0.9``, ``beta2 = 0.99``, ``tau = 1e-3``. The
server learning rate may be an optax schedule: it is indexed by the number of
applied server updates (the round, unless rounds were skipped).

As a `FederatedAlgorithm`, FedAdam is FedAvg with this server step:
``fed_avg(model, client_optimizer, adaptive_server_optimizer('adam', 0.01))``;
`fed_opt` is that, named ``fed_adam`` / ``fed_yogi`` / ``fed_adagrad``, and
the builders are `fed_opt` with each ``kind``.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_keras._numbers import is_real
from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._fed_avg import fed_avg
from fedjax_keras.algorithms._weighting import ClientWeighting
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess
from fedjax_keras.models import Model

KINDS = ("adam", "yogi", "adagrad")


class AdaptiveServerState(NamedTuple):
    """The state of `adaptive_server_optimizer`.

    Attributes:
      count: int32 scalar, server updates applied (indexes a schedule).
      m: pytree like the weights: the momentum of the pseudo-gradients.
      v: pytree like the weights: the second-moment estimate.
    """

    count: jax.Array
    m: Any
    v: Any


def adaptive_server_optimizer(
    kind: str, learning_rate, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> optax.GradientTransformation:
    """The paper's FedAdam / FedYogi / FedAdagrad server step as an optax transform.

    It receives the engine's pseudo-gradient ``-D_t`` and returns the update
    ``lr * m_t / (sqrt(v_t) + tau)`` (module docstring).

    Args:
      kind: 'adam', 'yogi' or 'adagrad'.
      learning_rate: a float or an optax schedule ``count -> rate``.
      beta1: momentum decay, in [0, 1).
      beta2: second-moment decay (Adam, Yogi), in [0, 1).
      tau: adaptivity, > 0; ``v`` starts at ``tau^2``.

    Raises:
      ValueError: for an unknown kind or a parameter out of range.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; received {kind!r}.")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not is_real(value) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a number in [0, 1); received {value!r}.")
    if not is_real(tau) or not tau > 0:
        raise ValueError(f"tau must be a number > 0; received {tau!r}.")
    if not callable(learning_rate) and not (is_real(learning_rate)):
        raise ValueError(
            f"learning_rate must be a number or an optax schedule; received {learning_rate!r}."
        )

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        v = jax.tree.map(lambda p: jnp.full_like(p, tau**2), params)
        return AdaptiveServerState(jnp.zeros((), jnp.int32), zeros, v)

    def second_moment(v, d):
        square = d * d
        if kind == "adagrad":
            return v + square
        if kind == "yogi":
            return v - (1.0 - beta2) * square * jnp.sign(v - square)
        return beta2 * v + (1.0 - beta2) * square

    def update(pseudo_gradient, state: AdaptiveServerState, params=None):
        del params
        delta = jax.tree.map(jnp.negative, pseudo_gradient)
        m = jax.tree.map(lambda m, d: beta1 * m + (1.0 - beta1) * d, state.m, delta)
        v = jax.tree.map(second_moment, state.v, delta)
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        updates = jax.tree.map(lambda m, v: rate * m / (jnp.sqrt(v) + tau), m, v)
        return updates, AdaptiveServerState(state.count + 1, m, v)

    return optax.GradientTransformation(init, update)


def fed_opt(
    model: Model,
    client_optimizer,
    server_learning_rate=1e-2,
    *,
    kind: str = "adam",
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    non_trainable: str = "broadcast",
    aggregator: Aggregator | None = None,
    client_learning_rate_schedule=None,
) -> FederatedAlgorithm:
    """FedOpt (Reddi et al. 2021, arXiv:2003.00295): FedAvg clients, the paper's adaptive server.

    `fed_avg` with ``adaptive_server_optimizer(kind, server_learning_rate,
    beta1, beta2, tau)`` (the rule is in the module docstring), named
    ``fed_<kind>``.

    Args:
      model, client_optimizer: as in `fed_avg`.
      server_learning_rate: ``lr``, a float or an optax schedule over rounds
        (1e-2 by default: a starting point; the paper tunes it per task).
      kind: 'adam', 'yogi' or 'adagrad'.
      beta1, beta2, tau: the paper's defaults 0.9, 0.99, 1e-3 (Adagrad has no ``beta2``).
      weighting, non_trainable, aggregator, client_learning_rate_schedule: as in `fed_avg`.

    Example:
      >>> algorithm = fed_opt(model, optax.sgd(0.05), 0.01, kind="yogi")
    """
    server = adaptive_server_optimizer(kind, server_learning_rate, beta1, beta2, tau)
    algorithm = fed_avg(
        model,
        client_optimizer,
        server,
        weighting=weighting,
        non_trainable=non_trainable,
        aggregator=aggregator,
        client_learning_rate_schedule=client_learning_rate_schedule,
    )
    return algorithm._replace(name=f"fed_{kind}")


@process_builder(fed_opt, fixed={"kind": "adam"})
def build_fed_adam(*args, **kwargs) -> FederatedProcess:
    """FedAdam (Reddi et al. 2021, arXiv:2003.00295): FedAvg clients, the paper's Adam server.

    ``v_t = beta2 * v_{t-1} + (1 - beta2) * D_t^2``; the whole rule is in the
    module docstring (no bias correction, ``v_{-1} = tau^2``).

    Args:
      model: from `from_keras_model`.
      client_optimizer: as in `build_weighted_fed_avg`.
      server_learning_rate: ``lr``, a float or an optax schedule over rounds
        (1e-2 by default: a starting point; the paper tunes it per task).
      beta1, beta2, tau: the paper's defaults 0.9, 0.99, 1e-3.
      weighting: 'num_examples' (default) or 'uniform' for the deltas.
      non_trainable: 'broadcast', 'average' or 'per_client' (see
        `build_weighted_fed_avg`).
      aggregator: combines the deltas into ``D_t`` (default: the weighted mean).
      client_learning_rate_schedule: see `build_weighted_fed_avg`.
      **engine_options: see `build_weighted_fed_avg`.

    Example:
      >>> process = build_fed_adam(model, optax.sgd(0.05), server_learning_rate=0.01)
    """


@process_builder(fed_opt, fixed={"kind": "yogi"})
def build_fed_yogi(*args, **kwargs) -> FederatedProcess:
    """FedYogi (Reddi et al. 2021, arXiv:2003.00295): FedAvg clients, the paper's Yogi server.

    ``v_t = v_{t-1} - (1 - beta2) * D_t^2 * sign(v_{t-1} - D_t^2)``: ``v`` moves
    towards ``D_t^2`` by a bounded amount, so it grows more slowly than Adam's
    after a large update. Arguments as `build_fed_adam`.
    """


@process_builder(
    fed_opt, fixed={"kind": "adagrad", "beta2": 0.0}, defaults={"server_learning_rate": 1e-1}
)
def build_fed_adagrad(*args, **kwargs) -> FederatedProcess:
    """FedAdagrad (Reddi et al. 2021, arXiv:2003.00295): the paper's Adagrad server.

    ``v_t = v_{t-1} + D_t^2`` (with the momentum ``beta1`` of Algorithm 2;
    pass ``beta1=0.0`` for plain Adagrad). Arguments as `build_fed_adam`
    (no ``beta2``); ``server_learning_rate`` defaults to 1e-1.
    """
