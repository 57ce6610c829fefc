"""``--aggregator``: an aggregator written on one line, and its privacy accountant.

A spec is one or more stages separated by ``/``, outermost first; each stage is
a kind of `fedjax_keras.aggregation.from_config`, optionally followed by ``:``
and its arguments as ``NAME=VALUE`` pairs separated by commas. Each stage
after the first is the previous one's ``inner`` aggregator:

    dp:noise_multiplier=1.0,clip=0.5         DP-FedAvg, fixed clip
    dp_ftrl:noise_multiplier=5,clip=0.5,restart_rounds=100   DP-FTRL (tree aggregation)
    clipped:norm=1.0/median                  norms bounded, then the median
    attacked:fraction=0.2,attack=sign_flip/trimmed_mean:beta=0.2

Values are read as YAML scalars (``1``, ``0.5``, ``true``, ``sign_flip``).
``dp``'s and ``dp_ftrl``'s ``clients_per_round`` default to the run's
``--cohort-size``. Only ``dp`` reports epsilon: DP-FTRL's guarantee needs
each client in at most one round per tree, which the command line's
independent per-round cohorts do not ensure (account it in Python with
`fedjax_keras.privacy.tree_accountant` and cohorts that do).
"""

from __future__ import annotations

import math

import yaml

from fedjax_keras.cli._errors import UsageError


def parse_aggregator(spec: str, cohort_size: int) -> dict:
    """The `from_config` dict of ``spec`` (see the module docstring).

    Raises:
      UsageError: a malformed spec, naming the stage and what was expected.
    """
    config: dict | None = None
    for stage in reversed(spec.split("/")):
        kind, _, arguments = stage.strip().partition(":")
        if not kind:
            raise UsageError(
                f"--aggregator: every stage needs a kind, as in 'clipped:norm=1/median'; "
                f"received {spec!r}."
            )
        entry: dict = {"kind": kind}
        for pair in filter(None, (p.strip() for p in arguments.split(","))):
            name, equals, text = pair.partition("=")
            if not equals or not name:
                raise UsageError(
                    f"--aggregator: {kind}'s arguments are NAME=VALUE pairs separated by "
                    f"commas; received {pair!r}."
                )
            try:
                entry[name.strip()] = yaml.safe_load(text)
            except yaml.YAMLError:
                entry[name.strip()] = text
        if kind in ("dp", "dp_ftrl"):
            entry.setdefault("clients_per_round", cohort_size)
        if config is not None:
            entry["inner"] = config
        config = entry
    return config


def build_aggregator(spec: str, cohort_size: int):
    """The `Aggregator` of ``spec``; a UsageError names what was wrong."""
    from fedjax_keras.aggregation import from_config

    try:
        return from_config(parse_aggregator(spec, cohort_size))
    except (ValueError, TypeError) as error:
        raise UsageError(f"--aggregator: {error}") from None


def privacy_accountant(spec: str, cohort_size: int, population: int):
    """The accountant of a spec with a ``dp`` stage and noise, or None.

    Cohorts are drawn as the command line draws them: fixed size without
    replacement from the population (``sampling='fixed'``), with delta
    ``1 / population``. Needs the ``[dp]`` extra.
    """
    stage = parse_aggregator(spec, cohort_size)
    while stage is not None and stage["kind"] != "dp":
        stage = stage.get("inner")
    if stage is None or not stage.get("noise_multiplier"):
        return None
    from fedjax_keras.privacy import accountant

    try:
        return accountant(
            noise_multiplier=float(stage["noise_multiplier"]),
            sampling_probability=min(cohort_size / population, 1.0),
            sampling="fixed",
            population=population,
        )
    except ImportError:
        raise UsageError(
            "--aggregator: a 'dp' stage with noise reports epsilon, which needs the "
            "dp-accounting package: pip install 'fedjax_keras[dp]'."
        ) from None
    except ValueError as error:
        raise UsageError(f"--aggregator: {error}") from None


def unaccounted_noise_note(spec: str, cohort_size: int) -> str | None:
    """Why a spec with a noised ``dp_ftrl`` stage reports no epsilon, or None."""
    stage = parse_aggregator(spec, cohort_size)
    while stage is not None and stage["kind"] != "dp_ftrl":
        stage = stage.get("inner")
    if stage is None or not stage.get("noise_multiplier"):
        return None
    return (
        "--aggregator dp_ftrl reports no epsilon: the command line samples a new cohort "
        "every round, so a client may take part more than once per tree, which the tree "
        "accountant does not bound; account in Python with fedjax_keras.privacy."
        "tree_accountant and your own participation scheme (docs/privacy.md)."
    )


def epsilon_text(value) -> str:
    """Epsilon for the progress line and the summary table."""
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.3g}"
