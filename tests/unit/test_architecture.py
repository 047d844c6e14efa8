"""What the package's docstrings claim about its structure, held true by reading its source.

- only ``comm/`` and ``distributed.py`` import ``torch.distributed``, and ``distributed.py`` does
  not import ``comm.torch_dist``;
- the modules' top-level imports form no cycle;
- the training package has no branch on an algorithm's name (the registry maps it);
- no module is much longer than one sitting's reading.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "elastic_entropy"
MAX_LINES = 400  # "about 400": a module that grows past this is split by what it does


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (not those imported inside functions)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from package import submodule` imports the submodule too
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _all_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_only_comm_and_distributed_import_torch_distributed() -> None:
    importers = {
        name
        for name, path in MODULES.items()
        if any(
            m == "torch.distributed" or m.startswith("torch.distributed.")
            for m in _all_imports(path)
        )
    }
    allowed = {"elastic_entropy.distributed"}
    assert {n for n in importers if not n.startswith("elastic_entropy.comm")} <= allowed
    assert "elastic_entropy.comm.torch_dist" in importers  # the check reads what it should
    distributed = _all_imports(MODULES["elastic_entropy.distributed"])
    assert not any(m.startswith("elastic_entropy.comm.torch_dist") for m in distributed)


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = {
        name: {
            m
            for m in _top_level_imports(path)
            # a module's own packages are being imported already when it runs
            if m in MODULES and m != name and not name.startswith(m + ".")
        }
        for name, path in MODULES.items()
    }
    assert graph["elastic_entropy.config"]  # the graph is read, not empty
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def _compares_algorithm_name(node: ast.AST) -> bool:
    """``... algorithm.name == ...`` or ``... in ...`` with it, anywhere in a comparison."""
    if not isinstance(node, ast.Compare):
        return False
    return any(
        isinstance(side, ast.Attribute)
        and side.attr == "name"
        and isinstance(side.value, ast.Attribute)
        and side.value.attr == "algorithm"
        for side in [node.left, *node.comparators]
    )


def test_the_training_package_has_no_branch_on_an_algorithm_name() -> None:
    training = [p for name, p in MODULES.items() if name.startswith("elastic_entropy.training")]
    assert len(training) > 5
    branches = [
        f"{path.name}:{node.lineno}"
        for path in training
        for node in ast.walk(ast.parse(path.read_text()))
        if _compares_algorithm_name(node)
    ]
    assert branches == []
    # the check finds such a branch where there is one
    assert _compares_algorithm_name(ast.parse("cfg.algorithm.name == 'ddp'").body[0].value)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_longer_than_one_sitting(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by responsibility"
