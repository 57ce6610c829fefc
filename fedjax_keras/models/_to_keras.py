"""Writing a `ModelWeights` back into a Keras model (`Model.to_keras`).

Variables are matched by structural path (`VariableLayout`), never by Keras'
own names or order. The default target is a fresh copy of the wrapped model,
made the way that reproduces its structure: ``keras.models.clone_model``
rebuilds a functional graph from its layers, which flattens a subclassed
functional model (a keras_hub task reaches its tied token embedding through the
backbone, a clone at the top level), so a subclass is rebuilt from its config
first and every candidate is kept only if its paths and shapes are the wrapped
model's.

LoRA (``layer.enable_lora``) is not part of most configs, so a copy is given
LoRA where the wrapped model has it, with the same rank and alpha. With
``merge_lora=True`` the factors are folded into the base weights instead, as
Keras computes them (``kernel + alpha / rank * lora_a @ lora_b``), and written
into a model without LoRA.
"""

import dataclasses
from typing import Any

import keras
import numpy as np

from fedjax_keras import errors
from fedjax_keras.models._variables import VariableLayout
from fedjax_keras.models._weights import ModelWeights

# The variable LoRA adds its product to (Dense and EinsumDense's kernel,
# Embedding's embeddings); its factors are ``lora_<base>_a`` and ``_b``.
_BASES = ("kernel", "embeddings")


@dataclasses.dataclass(frozen=True)
class LoraSite:
    """One layer with LoRA enabled, at ``path`` in the layer tree."""

    path: str
    rank: int
    alpha: float
    base: str

    def factor_paths(self) -> tuple[str, str]:
        return tuple(f"{self.path}/lora_{self.base}_{factor}" for factor in ("a", "b"))

    @property
    def base_path(self) -> str:
        return f"{self.path}/{self.base}"


def lora_sites(layout: VariableLayout) -> tuple[LoraSite, ...]:
    """The layers of ``layout`` with LoRA enabled, each once."""
    paths = {path for path, _ in layout.trainable + layout.non_trainable}
    sites, seen = [], set()
    for path, layer in layout.layers:
        if not getattr(layer, "lora_enabled", False) or id(layer) in seen:
            continue
        seen.add(id(layer))
        base = next(
            (name for name in _BASES if f"{path}/{name}" in paths),
            None,
        )
        if base is None:
            raise errors.WeightsMismatchError(
                f"Layer {path!r} ({type(layer).__name__}) has LoRA enabled but no "
                f"{' or '.join(_BASES)} variable to add it to; to_keras supports LoRA on "
                "Dense, EinsumDense and Embedding layers."
            )
        sites.append(LoraSite(path, int(layer.lora_rank), float(layer.lora_alpha), base))
    return tuple(sites)


def merge_lora_factors(weights: dict, sites) -> dict:
    """``weights`` with each site's factors folded into its base weight and removed.

    Args:
      weights: path -> array, holding every site's base [..., units] and both
        factors (``lora_kernel_a`` [..., rank], ``lora_kernel_b`` [rank, units]).
      sites: the `LoraSite`s to merge.

    Returns:
      A new dict: ``base + alpha / rank * a @ b`` at each base path, in the
      base's dtype, and no factor paths.
    """
    merged = dict(weights)
    for site in sites:
        a, b = (np.asarray(merged.pop(path)) for path in site.factor_paths())
        base = np.asarray(merged[site.base_path])
        product = np.matmul(a.astype(np.float32), b.astype(np.float32))
        merged[site.base_path] = (base + (site.alpha / site.rank) * product).astype(base.dtype)
    return merged


def _built(model: keras.Model, dummy_x) -> keras.Model:
    if not all(layer.built for layer in model._flatten_layers()):
        model(dummy_x, training=False)
    return model


def _structure(layout: VariableLayout) -> dict[str, tuple]:
    return {path: tuple(v.shape) for path, v in layout.trainable + layout.non_trainable}


def _layer_at(layout: VariableLayout, path: str):
    return dict(layout.layers).get(path)


def _add_lora(target: keras.Model, sites, *, strict: bool) -> None:
    """Gives ``target``'s layers at ``sites`` LoRA of the sites' rank and alpha.

    ``strict`` (a model the user passed) refuses instead of changing it.
    """
    layout = VariableLayout.of(target)
    for site in sites:
        layer = _layer_at(layout, site.path)
        if layer is None:
            continue
        if getattr(layer, "lora_enabled", False):
            # Keras' from_config (so clone_model) of a Dense or Embedding with LoRA
            # drops lora_alpha, which then defaults to the rank.
            if layer.lora_alpha != site.alpha:
                if strict:
                    raise errors.WeightsMismatchError(
                        f"Layer {site.path!r} of keras_model has lora_alpha "
                        f"{layer.lora_alpha}; the weights were trained with {site.alpha}."
                    )
                layer.lora_alpha = site.alpha
            continue
        if strict:
            raise errors.WeightsMismatchError(
                f"The weights hold LoRA factors for layer {site.path!r}, which has no LoRA "
                f"in keras_model: call enable_lora(rank={site.rank}) on it first, or pass "
                "merge_lora=True to fold the factors into its weights."
            )
        layer.enable_lora(site.rank, lora_alpha=site.alpha)


def _refuse_lora(target: keras.Model, sites) -> None:
    layout = VariableLayout.of(target)
    enabled = [
        site.path for site in sites if getattr(_layer_at(layout, site.path), "lora_enabled", False)
    ]
    if enabled:
        raise errors.WeightsMismatchError(
            f"merge_lora=True writes merged weights into a model without LoRA; layers "
            f"{enabled!r} of keras_model have LoRA enabled."
        )


def _without_lora_config(layer) -> keras.Layer:
    """A fresh layer of ``layer``'s config, LoRA left out (``clone_model``'s clone_function)."""
    config = layer.get_config()
    if config.get("lora_rank"):
        config = {**config, "lora_rank": None}
        config.pop("lora_alpha", None)
    return type(layer).from_config(config)


def _candidate_copies(source: keras.Model, merge_lora: bool):
    """Ways to make a fresh copy of ``source``, the likeliest to keep its structure first."""
    clone_function = _without_lora_config if merge_lora else None

    def clone():
        return keras.models.clone_model(source, clone_function=clone_function)

    def from_config():
        config = source.get_config()
        if type(source).__module__.startswith("keras_hub."):
            # A keras_hub task compiles itself unless told not to, and its config
            # does not say: an uncompiled copy can be wrapped again.
            try:
                return type(source).from_config({**config, "compile": False})
            except TypeError:
                pass
        return type(source).from_config(config)

    plain = isinstance(source, keras.Sequential) or type(source).__module__.startswith("keras.")
    return (clone, from_config) if plain else (from_config, clone)


def fresh_copy(source: keras.Model, layout: VariableLayout, dummy_x, merge_lora: bool):
    """A new instance of ``source``'s architecture with its variable structure.

    Args:
      source: the wrapped Keras model (never changed).
      layout: its `VariableLayout`.
      dummy_x: one batch of inputs, to build an unbuilt copy.
      merge_lora: whether the copy is to take merged weights (no LoRA).

    Returns:
      The first candidate copy whose paths and shapes are the source's (less
      the LoRA factors with ``merge_lora``).

    Raises:
      WeightsMismatchError: no way of copying reproduces the structure.
    """
    sites = lora_sites(layout)
    expected = _structure(layout)
    if merge_lora:
        expected = {p: s for p, s in expected.items() if not _is_factor(p, sites)}
    failures = []
    for make in _candidate_copies(source, merge_lora):
        try:
            copy = _built(make(), dummy_x)
            if merge_lora:
                _refuse_lora(copy, sites)
            else:
                _add_lora(copy, sites, strict=False)
        except Exception as e:  # noqa: BLE001 - subclassed models cannot always be copied.
            failures.append(f"{make.__name__}: {type(e).__name__}: {e}")
            continue
        if not merge_lora:  # a merged model is a plain one: its config's flags
            _mirror_trainable(layout, copy)
        differences = _differences(_structure(VariableLayout.of(copy)), expected)
        if not differences:
            return copy
        failures.append(f"{make.__name__}: {differences}")
    raise errors.WeightsMismatchError(
        f"Could not make a fresh copy of {type(source).__name__} with its variables "
        f"({'; '.join(failures)}); pass keras_model=<a new instance of the same "
        "architecture> to to_keras."
    )


def _mirror_trainable(layout: VariableLayout, copy: keras.Model) -> None:
    """Gives ``copy`` the source's trainable flags, layer by layer, then variable by variable.

    A config rarely records them (a keras_hub backbone's enable_lora freezes
    every other layer), and a copy that trains other weights wraps differently.
    """
    copied = VariableLayout.of(copy)
    layers = dict(copied.layers)
    for path, layer in layout.layers:  # parents first: a layer's flag sets its children's
        if path and path in layers and layers[path].trainable != layer.trainable:
            layers[path].trainable = layer.trainable
    variables = dict(copied.trainable + copied.non_trainable)
    for path, variable in layout.trainable + layout.non_trainable:
        if path in variables and variables[path].trainable != variable.trainable:
            variables[path].trainable = variable.trainable


def _is_factor(path: str, sites) -> bool:
    return any(path in site.factor_paths() for site in sites)


def _differences(actual: dict, expected: dict) -> str:
    missing = sorted(set(actual) - set(expected))
    unexpected = sorted(set(expected) - set(actual))
    wrong_shape = sorted(
        f"{path}: weights {expected[path]} vs model {actual[path]}"
        for path in set(actual) & set(expected)
        if actual[path] != expected[path]
    )
    if not (missing or unexpected or wrong_shape):
        return ""
    return f"missing {missing!r}, unexpected {unexpected!r}, wrong shape {wrong_shape!r}"


def write_weights(
    weights: ModelWeights,
    target: keras.Model,
    layout: VariableLayout,
    dummy_x: Any,
    *,
    merge_lora: bool,
    strict: bool,
) -> keras.Model:
    """Assigns ``weights`` to ``target``'s variables by path; see `Model.to_keras`."""
    target = _built(target, dummy_x)
    sites = lora_sites(layout)
    given = {**weights.trainable, **weights.non_trainable}
    if merge_lora:
        _refuse_lora(target, sites)
        given = merge_lora_factors(given, sites)
    else:
        _add_lora(target, sites, strict=strict)
    written = VariableLayout.of(target)
    variables = dict(written.trainable + written.non_trainable)
    differences = _differences(
        {path: tuple(v.shape) for path, v in variables.items()},
        {path: tuple(np.shape(value)) for path, value in given.items()},
    )
    if differences:
        raise errors.WeightsMismatchError(
            f"The weights do not fit this Keras model: {differences}. Write them into a "
            "model of the same architecture (e.g. a new instance from the same builder)."
        )
    for path, variable in variables.items():
        variable.assign(np.asarray(given[path]))
    for layer in target._flatten_layers():
        # An adapted Normalization computes with constants its finalize_state()
        # makes from the adapted mean and variance, as Keras' weight loading does.
        if callable(getattr(layer, "finalize_state", None)):
            layer.finalize_state()
    return target
