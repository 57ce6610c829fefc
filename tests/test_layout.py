"""The package's layout rules (STYLE.md "Layers you can see", "Modules"), checked on the source.

Pure Python over the files' syntax trees (`ast`): nothing is imported or compiled.

- The import graph between modules of fedjax_keras has no cycle. Its edges are
  every ``import`` / ``from ... import`` statement of a module, at module level
  and inside functions alike (a deferred import is still a dependency; today
  none closes a cycle). ``from fedjax_keras.p import m`` is an edge to the
  module ``p.m`` when ``m`` is one, else to the package ``p``.
- No module is longer than 500 lines; a module over 400 lines says why it is one
  job in its docstring, with a line containing ``One job:``.
- No private name crosses a package (a package is a folder under fedjax_keras/):
  a module imports another package's ``_private`` module or ``_private`` name
  only through that package's public ``__init__``, and uses no
  ``package._private`` attribute. The top-level private modules
  (``fedjax_keras._tree``, ``_xla_tuning``, ...) are the root's helpers shared by
  every layer, importable anywhere; the root ``__init__`` follows the rule too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fedjax_keras"
MAX_LINES = 500
ONE_JOB_OVER = 400
ONE_JOB_MARK = "One job:"


def _module_name(path: pathlib.Path) -> str:
    parts = ("fedjax_keras",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return MODULES.get(name, pathlib.Path()).name == "__init__.py"


def _package_of(name: str) -> str:
    """``fedjax_keras.<folder>`` for modules in a folder, ``fedjax_keras`` for the top level."""
    parts = name.split(".")
    folder = ".".join(parts[:2])
    return folder if len(parts) > 1 and _is_package(folder) else "fedjax_keras"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(importer: str, tree: ast.Module):
    """(line, imported module, imported names) for every fedjax_keras import, at any depth."""
    nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fedjax_keras"):
                    yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(importer, node)
            if module.startswith("fedjax_keras"):
                yield node.lineno, module, tuple(a.name for a in node.names)


def _edges(importer: str) -> set[str]:
    targets = set()
    for _, module, names in _imports(importer, TREES[importer]):
        submodules = {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
        targets |= submodules
        if len(submodules) < len(names) or not names:
            targets.add(module)
    return {t for t in targets if t in MODULES and t != importer}


def _cycles() -> list[list[str]]:
    graph = {name: sorted(_edges(name)) for name in MODULES}
    found, state = [], {}  # state: 1 on the path, 2 done

    def visit(name, path):
        state[name] = 1
        path.append(name)
        for target in graph[name]:
            if state.get(target) == 1:
                found.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
    return found


def test_no_import_cycle_between_modules():
    cycles = _cycles()
    assert not cycles, "Import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_LINES}): "
        "split it along its seams, one concept per module."
    )
    if lines > ONE_JOB_OVER:
        docstring = ast.get_docstring(TREES[name]) or ""
        assert ONE_JOB_MARK in docstring, (
            f"{path.relative_to(PACKAGE.parent)} has {lines} lines (over {ONE_JOB_OVER}): its "
            f"module docstring must say why it is one job, in a line with {ONE_JOB_MARK!r}, "
            "or the module should be split."
        )


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _private_crossings(importer: str) -> list[str]:
    """Private modules or names of another package that ``importer`` reaches."""
    own = _package_of(importer)
    tree = TREES[importer]
    found = []
    aliases = {}  # local name -> fedjax_keras module it is bound to
    for line, module, names in _imports(importer, tree):
        target = _package_of(module)
        if target == own or target == "fedjax_keras":  # own package, or the shared root helpers
            continue
        private_path = any(_is_private(part) for part in module.split(".")[2:])
        private_names = [n for n in names if _is_private(n)]
        if private_path or private_names:
            shown = ", ".join(private_names) if private_names and not private_path else "..."
            found.append(f"line {line}: from {module} import {shown}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _resolve(importer, node)
            for alias in node.names:
                if f"{module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in MODULES:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _is_private(node.attr)
            and _package_of(aliases[node.value.id]) not in (own, "fedjax_keras")
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_package():
    offenders = {
        MODULES[name].relative_to(PACKAGE.parent): crossings
        for name in MODULES
        if (crossings := _private_crossings(name))
    }
    assert not offenders, (
        "Private names imported across packages; make the name public in its package's "
        "__init__ (`from ._m import f as f`) or move it:\n"
        + "\n".join(f"{path}: {'; '.join(lines)}" for path, lines in offenders.items())
    )


def test_the_checks_see_the_package():
    """Guards the checks above against passing vacuously (a wrong folder, an empty graph)."""
    assert "fedjax_keras.engine._process" in MODULES or "fedjax_keras.engine" in MODULES
    assert _package_of("fedjax_keras.data._batching") == "fedjax_keras.data"
    assert _package_of("fedjax_keras.errors") == "fedjax_keras"
    assert sum(len(_edges(name)) for name in MODULES) > 100
