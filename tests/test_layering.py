"""The architecture, read from the source with ``ast``: imports flow CLI → feature → core.

No cycles. Nothing here imports the modules under test, so a broken import cannot hide a
layering error. Module-level and function-level imports both count; imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tryssh"

CORE = frozenset(
    {"errors", "netstring", "jobfile", "jobdir", "config", "policy", "audit", "command", "records"}
)


def layer(module: str) -> str:
    if module == "cli" or module.startswith("cli_"):
        return "cli"
    return "core" if module in CORE else "feature"


def modules() -> dict[str, Path]:
    found = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert CORE <= found.keys(), f"core modules missing: {sorted(CORE - found.keys())}"
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` (their ``else:`` does run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def tryssh_imports(path: Path, known: set[str]) -> set[str]:
    """The tryssh modules that *path* imports when it runs."""
    deps: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "tryssh" and len(parts) > 1:
                    deps.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                raise AssertionError(f"{path.name}: import reaches above the package")
            if node.level == 1:
                parts = node.module.split(".") if node.module else []
            elif node.module and node.module.split(".")[0] == "tryssh":
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts and parts[0]:
                deps.add(parts[0])
            else:  # ``from . import x`` / ``from tryssh import x``: x may be a module
                deps.update(a.name for a in node.names if a.name in known)
    return deps & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: tryssh_imports(path, set(mods)) - {name} for name, path in mods.items()}


def test_classification_sees_every_layer():
    layers = {layer(m) for m in modules()}
    assert layers == {"cli", "feature", "core"}


def test_the_parser_sees_relative_absolute_and_function_level_imports(tmp_path):
    source = (
        "from __future__ import annotations\n"
        "import tryssh.jobdir\n"
        "from . import config, notamodule\n"
        "from .errors import UsageError\n"
        "from tryssh.policy import Refused\n"
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    from .serve import Server\n"
        "else:\n"
        "    from .audit import AuditLog\n"
        "def f():\n"
        "    from .records import RecordStore\n"
    )
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {"jobdir", "config", "errors", "policy", "serve", "audit", "records"}
    assert tryssh_imports(path, known) == {
        "jobdir", "config", "errors", "policy", "audit", "records",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("importer", "forbidden"), [("core", {"feature", "cli"}), ("feature", {"cli"})]
)
def test_imports_flow_from_cli_to_feature_to_core(importer, forbidden):
    wrong = sorted(
        f"{name} ({importer}) imports {dep} ({layer(dep)})"
        for name, deps in graph().items()
        if layer(name) == importer
        for dep in deps
        if layer(dep) in forbidden
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)
