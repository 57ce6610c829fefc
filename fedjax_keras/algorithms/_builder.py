"""TFF-named builders made from the pure factories, so the two cannot drift apart.

``build_fed_prox(model, ..., mu=0.01, batch_size=10)`` is
``FederatedProcess(model, fed_prox(model, ..., mu=0.01), batch_size=10)``.
Written by hand, every builder restated its factory's whole signature and
forwarded each argument; `process_builder` derives the builder's signature from
the factory's (``inspect.signature`` and ``help`` show every parameter) and
sends what is not the factory's to the engine, where unknown names are refused.
"""

import functools
import inspect
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fedjax_keras.engine import FederatedProcess

_ENGINE_OPTIONS = inspect.Parameter("engine_options", inspect.Parameter.VAR_KEYWORD)


def process_builder(
    factory: Callable[..., Any],
    *,
    fixed: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    shown_engine_options: Iterable[str] = (),
) -> Callable[[Callable[..., FederatedProcess]], Callable[..., FederatedProcess]]:
    """Turns a documented stub into ``FederatedProcess(model, factory(...), **engine_options)``.

    The decorated function gives the builder its name and docstring only; its
    body never runs. The builder's signature is the factory's, less ``fixed``,
    with ``defaults`` replacing the factory's, then ``shown_engine_options``
    (keyword-only, default None) and ``**engine_options``. A docstring without
    an ``Args:`` section gets one that sends the reader to the factory's.

    Args:
      factory: returns a `FederatedAlgorithm`; its first parameter is ``model``.
      fixed: factory arguments the builder sets and does not take
        (``build_unweighted_fed_avg`` fixes ``weighting``).
      defaults: factory parameters whose default the builder changes.
      shown_engine_options: engine options the builder documents by name
        (``population_size`` for the algorithms with a client table).

    Returns:
      A decorator for the builder's stub.

    Example:
      ``@process_builder(fed_prox)`` over ``def build_fed_prox(*args, **kwargs)``
      whose body is its docstring.
    """
    fixed = dict(fixed or {})
    shown_engine_options = tuple(shown_engine_options)
    defaults = dict(defaults or {})
    factory_parameters = inspect.signature(factory).parameters
    unknown = (fixed.keys() | defaults.keys()) - factory_parameters.keys()
    if unknown:
        raise ValueError(f"{factory.__name__} has no parameters {sorted(unknown)}.")
    taken = [
        parameter.replace(default=defaults.get(name, parameter.default))
        for name, parameter in factory_parameters.items()
        if name not in fixed
    ]
    shown = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
        for name in shown_engine_options
    ]
    signature = inspect.Signature(
        [*taken, *shown, _ENGINE_OPTIONS], return_annotation=FederatedProcess
    )
    factory_names = [parameter.name for parameter in taken]

    def decorate(documented):
        @functools.wraps(documented)
        def build(*args, **kwargs) -> FederatedProcess:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{documented.__name__}(): {error}") from None
            bound.apply_defaults()
            arguments = bound.arguments
            engine_options = dict(arguments.pop(_ENGINE_OPTIONS.name))
            for name in shown_engine_options:
                if arguments[name] is not None:
                    engine_options[name] = arguments[name]
            algorithm = factory(**{name: arguments[name] for name in factory_names}, **fixed)
            return FederatedProcess(arguments["model"], algorithm, **engine_options)

        del build.__wrapped__  # help() and inspect.signature read the signature below
        build.__signature__ = signature
        build.__doc__ = _with_args_section(documented.__doc__ or "", factory, taken, shown)
        return build

    return decorate


def _with_args_section(doc: str, factory, taken, shown) -> str:
    """``doc``, cleaned, with an ``Args:`` section that sends readers to the factory, if none."""
    doc = inspect.cleandoc(doc)
    if "\nArgs:\n" in doc:
        return doc
    names = ", ".join(parameter.name for parameter in taken)
    entries = [f"{names}: as in `{factory.__name__}`."]
    entries += [f"{parameter.name}: an engine option (`EngineOptions`)." for parameter in shown]
    entries.append("**engine_options: see `build_weighted_fed_avg`.")
    wrapped = (
        textwrap.fill(entry, 96, initial_indent="  ", subsequent_indent="    ") for entry in entries
    )
    section = "Args:\n" + "\n".join(wrapped) + "\n\n"
    for header in ("Returns:\n", "Example:\n"):
        if "\n" + header in doc:
            head, tail = doc.split("\n" + header, 1)
            return head + "\n" + section + header + tail
    return doc + "\n\n" + section.rstrip()
