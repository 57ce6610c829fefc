"""Aggregators from plain data (a command line's or a config file's dict).

``from_config({'kind': 'dp', 'noise_multiplier': 1.0, 'clients_per_round': 10})``
builds ``dp_aggregator(noise_multiplier=1.0, clients_per_round=10)``. Every
other key is the builder's keyword argument of the same name, except
`attacked`'s ``kind`` (the attack), spelled ``'attack'`` here since
``'kind'`` names the aggregator. Wrappers take
their inner aggregator as a nested dict under ``'inner'`` (default
``{'kind': 'mean'}``): ``{'kind': 'clipped', 'norm': 1.0, 'inner': {'kind': 'median'}}``.
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedjax_keras.aggregation._aggregator import Aggregator, mean
from fedjax_keras.aggregation._aggregator import sum as sum_aggregator
from fedjax_keras.aggregation._attack import attacked
from fedjax_keras.aggregation._clipping import clipped, zeroed
from fedjax_keras.aggregation._compression import quantized, top_k, upload_size
from fedjax_keras.aggregation._dp import dp_aggregator
from fedjax_keras.aggregation._robust import krum, median, trimmed_mean
from fedjax_keras.aggregation._tree_aggregation import dp_ftrl_aggregator

# kind -> (builder, whether it wraps an inner aggregator)
KINDS: dict[str, tuple[Callable[..., Aggregator], bool]] = {
    "mean": (mean, False),
    "sum": (sum_aggregator, False),
    "dp": (dp_aggregator, False),
    "dp_ftrl": (dp_ftrl_aggregator, False),
    "clipped": (clipped, True),
    "zeroed": (zeroed, True),
    "median": (median, False),
    "trimmed_mean": (trimmed_mean, False),
    "krum": (krum, False),
    "attacked": (attacked, True),
    "quantized": (quantized, True),
    "top_k": (top_k, True),
    "upload_size": (upload_size, True),
}
# Config key -> builder argument, where the builder's name is taken by 'kind'.
RENAMED = {"attacked": {"attack": "kind"}}


def from_config(config: Mapping[str, Any]) -> Aggregator:
    """Builds an aggregator from a dict: ``'kind'`` names it, the other keys are its arguments.

    Args:
      config: ``{'kind': name, **arguments}``; kinds: ``mean``, ``sum``,
        ``dp`` (`dp_aggregator`), ``dp_ftrl`` (`dp_ftrl_aggregator`),
        ``clipped``, ``zeroed``, ``median``,
        ``trimmed_mean``, ``krum``, ``attacked``, ``quantized``, ``top_k``,
        ``upload_size``. Wrappers (``clipped``, ``zeroed``, ``attacked``,
        ``quantized``, ``top_k``, ``upload_size``) read their inner
        aggregator's config under ``'inner'`` (default ``{'kind': 'mean'}``);
        ``attacked``'s attack kind is ``'attack'`` (``'sign_flip'``,
        ``'scale'``, ``'gaussian'``).

    Returns:
      The `Aggregator`.

    Raises:
      ValueError: for a missing or unknown kind, an unknown argument or a
        missing required one (the message lists what the kind accepts).

    Example:
      >>> aggregator = from_config({"kind": "quantized", "bits": 8, "inner": {"kind": "median"}})
    """
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ValueError(
            "An aggregator config is a dict with a 'kind' (one of "
            f"{sorted(KINDS)}) and that kind's arguments, e.g. "
            f"{{'kind': 'trimmed_mean', 'beta': 0.1}}; received {config!r}."
        )
    kind = config["kind"]
    if kind not in KINDS:
        raise ValueError(f"Unknown aggregator kind {kind!r}; expected one of {sorted(KINDS)}.")
    builder, wraps = KINDS[kind]
    renamed = RENAMED.get(kind, {})
    to_config = {argument: key for key, argument in renamed.items()}
    arguments = {name: value for name, value in config.items() if name != "kind"}
    parameters = {
        to_config.get(name, name): p for name, p in inspect.signature(builder).parameters.items()
    }
    accepted = [name for name in parameters if name != "inner"]
    unknown = sorted(set(arguments) - set(accepted) - ({"inner"} if wraps else set()))
    if unknown:
        raise ValueError(
            f"Aggregator kind {kind!r} takes no argument(s) {unknown}; it accepts "
            f"{accepted + (['inner'] if wraps else [])}."
        )
    if wraps:
        arguments["inner"] = from_config(arguments.get("inner", {"kind": "mean"}))
    missing = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in arguments
    ]
    if missing:
        raise ValueError(
            f"Aggregator kind {kind!r} needs the argument(s) {missing}; received {config!r}."
        )
    return builder(**{renamed.get(name, name): value for name, value in arguments.items()})
