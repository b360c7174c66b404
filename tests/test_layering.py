"""The package layering: `lmlab.models` (the transformer and its parts) is the core every stage builds on,
so it imports nothing from the stages around it (hub, training, quantization, ...), lazily or not."""

import ast
from pathlib import Path

import lmlab

SRC = Path(lmlab.__file__).parent
CORE_MAY_IMPORT = {"config", "errors", "io", "models"}


def lmlab_imports(path: Path) -> set[str]:
    """The lmlab packages/modules (second name of the dotted path) a file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found |= {name.split(".")[1] for name in names if name.startswith("lmlab.") and name.count(".") >= 1}
    return found


def test_models_imports_only_the_core():
    outside = {str(path.relative_to(SRC)): sorted(lmlab_imports(path) - CORE_MAY_IMPORT)
               for path in sorted((SRC / "models").rglob("*.py"))}
    assert {name: packages for name, packages in outside.items() if packages} == {}
