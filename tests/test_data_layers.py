"""supercm.data's modules import one another in one direction only (issue 18 §2), read from their source."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import supercm.data

DATA = Path(supercm.data.__file__).parent
MODULES = {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(DATA.glob("*.py")) if p.stem != "__init__"}


def _relative_imports(tree: ast.Module, *, top_level: bool):
    """(line, imported module of supercm.data or None for the package, names) of each ``from .X import ...``."""
    nodes = tree.body if top_level else [n for n in ast.walk(tree) if n not in tree.body]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            yield node.lineno, node.module, [a.name for a in node.names]


def test_no_function_local_imports_between_data_modules():
    local = [f"{name}.py:{line} from .{mod or ''} import {', '.join(names)}"
             for name, tree in MODULES.items() for line, mod, names in _relative_imports(tree, top_level=False)]
    assert not local, "import these at module level (move what causes a cycle to a lower module): " + "; ".join(local)


def test_data_modules_form_no_cycle_and_skip_the_package_init():
    graph = {}
    for name, tree in MODULES.items():
        deps = set()
        for line, mod, names in _relative_imports(tree, top_level=True):
            if mod is None:  # ``from . import X``: a module of data/, or a name of the package __init__
                names_of_init = [n for n in names if n not in MODULES]
                assert not names_of_init, f"{name}.py:{line} imports {names_of_init} from the package __init__"
                deps.update(names)
            else:
                deps.add(mod)
        graph[name] = deps
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle in supercm.data: {' -> '.join(err.args[1])}") from None
    assert order.index("base") < order.index("decode") < order.index("stream") < order.index("images")
    assert "images" not in graph["stream"] and "domains" not in graph["offline"]


def test_no_private_name_crosses_a_data_module():
    crossing = [f"{name}.py:{line} from .{mod or ''} import {n}" for name, tree in MODULES.items()
                for line, mod, names in _relative_imports(tree, top_level=True) for n in names if n.startswith("_")]
    assert not crossing, "give these a public name where they live: " + "; ".join(crossing)


def test_fetchable_datasets_are_registered_in_order():
    from supercm.data import FETCHABLE, fetchers, offline

    assert tuple(FETCHABLE) == ("mnist10k", "fashion_mnist", "mnistm_style", "optdigits", "synth_digits",
                               "mnistm_pool")
    assert offline.FETCHABLE is FETCHABLE and list(fetchers.FETCHERS) == list(FETCHABLE)
