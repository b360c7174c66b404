"""The package layering: `lmlab.models` (the transformer and its parts) is the core every stage builds on,
so it imports nothing from the stages around it (hub, training, quantization, ...), lazily or not; and the
top-level packages and modules import each other one way only (no cycle), counting imports inside
functions too, which only postpone a cycle to run time."""

import ast
from pathlib import Path

import lmlab

SRC = Path(lmlab.__file__).parent
CORE_MAY_IMPORT = {"config", "errors", "io", "models"}


def lmlab_imports(path: Path, src: Path = SRC) -> set[str]:
    """The lmlab top-level packages/modules (second name of the dotted path) a file under `src` imports
    anywhere in it."""
    package = path.relative_to(src.parent).with_suffix("").parts[:-1]  # ("lmlab", "hub") for lmlab/hub/x.py
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names = [f"{module}.{alias.name}" for alias in node.names] if module == "lmlab" else [module]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("lmlab.")}
    return found


def package_graph() -> dict[str, set[str]]:
    """Top-level package (or module) of lmlab -> the other top-level ones its files import."""
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        graph.setdefault(top, set()).update(lmlab_imports(path) - {top})
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Each set of packages that reach one another (a strongly connected component of more than one), by
    Tarjan's algorithm (1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while not component or member != node:
                member = stack.pop()
                component.add(member)
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_models_imports_only_the_core():
    outside = {str(path.relative_to(SRC)): sorted(lmlab_imports(path) - CORE_MAY_IMPORT)
               for path in sorted((SRC / "models").rglob("*.py"))}
    assert {name: packages for name, packages in outside.items() if packages} == {}


def test_cycles_found_by_hand():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(graph) == {frozenset("abc"), frozenset("de")}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == set()


def test_imports_between_packages_have_no_cycle():
    assert cycles(package_graph()) == set()


def test_imports_inside_functions_and_from_lmlab_count(tmp_path):
    package = tmp_path / "lmlab" / "hub"
    package.mkdir(parents=True)
    module = package / "x.py"
    module.write_text("from lmlab import tokenizers\n\ndef f():\n    from lmlab.training.trainer import T\n"
                      "    from ..data import y\n    from . import z\n", encoding="utf-8")
    assert lmlab_imports(module, tmp_path / "lmlab") == {"tokenizers", "training", "data", "hub"}
