"""The architecture, read from the source with ``ast``: imports flow CLI → feature → core.

No cycles. Nothing here imports the modules under test, so a broken import cannot hide a
layering error. Module-level and function-level imports both count; imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tryssh"

#: A module's layer is its folder. ``errors`` sits at the top and belongs to the core.
LAYERS = ("core", "server", "client", "cli")
#: Who may import whom: the CLI sits on both products, each product on the core.
ALLOWED = {
    "core": {"core"},
    "server": {"core", "server"},
    "client": {"core", "client"},
    "cli": {"core", "server", "client", "cli"},
}
#: The few crossings between the two products, each with its reason.
CROSSINGS = {
    # The forward builder is an SSH client: it delivers a job to another try server.
    ("server.builders", "client.sshclient"),
    ("server.builders", "client.transport"),
}


def layer(module: str) -> str:
    top = module.split(".")[0]
    return "core" if top == "errors" else top


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name == "__init__":
            continue
        found[".".join(rel.parts)] = path
    assert {layer(m) for m in found} <= set(LAYERS), sorted(found)
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


def tryssh_imports(path: Path, known: set[str], package: str = "") -> set[str]:
    """The tryssh modules (dotted below ``tryssh``) that *path* imports when it runs.

    *package* is the importing module's folder below ``tryssh`` ("" at the top), for
    relative imports.
    """
    deps: set[str] = set()

    def add(dotted: str, names: list[str]) -> None:
        if dotted in known:
            deps.add(dotted)
        for name in names:  # ``from pkg import module``
            sub = f"{dotted}.{name}" if dotted else name
            if sub in known:
                deps.add(sub)

    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "tryssh":
                    add(".".join(parts[1:]), [])
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = package.split(".") if package else []
                if node.level - 1 > len(base):
                    raise AssertionError(f"{path.name}: import reaches above the package")
                base = base[: len(base) - (node.level - 1)]
                add(".".join([*base, *(node.module.split(".") if node.module else [])]), names)
            elif node.module and node.module.split(".")[0] == "tryssh":
                add(".".join(node.module.split(".")[1:]), names)
    return deps


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {
        name: tryssh_imports(path, known, name.rpartition(".")[0]) - {name}
        for name, path in mods.items()
    }


def test_classification_sees_every_layer():
    assert {layer(m) for m in modules()} == set(LAYERS)


def test_the_parser_sees_relative_absolute_and_function_level_imports(tmp_path):
    source = (
        "from __future__ import annotations\n"
        "import tryssh.core.jobdir\n"
        "from . import config, notamodule\n"
        "from ..errors import UsageError\n"
        "from tryssh.server.policy import PolicyRefused\n"
        "from tryssh.core import records\n"
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    from .serve import Server\n"
        "else:\n"
        "    from .audit import AuditLog\n"
        "def f():\n"
        "    from tryssh.client.sshclient import connect\n"
    )
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {
        "core.jobdir", "server.config", "errors", "server.policy", "server.serve",
        "server.audit", "core.records", "client.sshclient",
    }  # fmt: skip
    assert tryssh_imports(path, known, "server") == {
        "core.jobdir", "server.config", "errors", "server.policy", "server.audit",
        "core.records", "client.sshclient",
    }  # fmt: skip


def test_imports_flow_from_cli_to_products_to_core():
    wrong = sorted(
        f"{name} ({layer(name)}) imports {dep} ({layer(dep)})"
        for name, deps in graph().items()
        for dep in deps
        if layer(dep) not in ALLOWED[layer(name)] and (name, dep) not in CROSSINGS
    )
    assert not wrong, "\n".join(wrong)


def test_every_named_crossing_is_still_used():
    edges = graph()
    assert all(dep in edges.get(name, ()) for name, dep in CROSSINGS), "drop stale crossings"


def test_core_is_standard_library_only():
    """core/ is on the forced-command path: no third-party import, even lazily."""
    import sys

    wrong = []
    for name, path in modules().items():
        if layer(name) != "core":
            continue
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                # a leading underscore: a built-in accelerator module (_sha256, _sha2)
                stdlib = top.startswith("_") or top in sys.stdlib_module_names
                if top != "tryssh" and not stdlib:
                    wrong.append(f"{name} imports {mod}")
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
