"""The layers of deploys/ stay visible: no import cycles, a pure core, a stdlib-only host program.

Read from the source with ``ast`` (nothing is imported), so a violation is found even in a module
no test imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from deploys.core.settings import REPO_ROOT

DEPLOYS = REPO_ROOT / "deploys"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, relative ones resolved."""
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in DEPLOYS.rglob("*.py")}
    return {
        name: {m for m in imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    # Depth-first search; a grey node met again closes a cycle.
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "grey"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "grey":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "black"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_never_imports_pyinfra_or_the_pyinfra_layer() -> None:
    forbidden = ("pyinfra", "deploys.facts", "deploys.operations", "deploys.components")
    offenders = {
        f"{module_name(p)} imports {m}"
        for p in (DEPLOYS / "core").rglob("*.py")
        for m in imports(p)
        if m.split(".")[0] == "pyinfra" or m.startswith(forbidden[1:])
    }
    assert offenders == set()


def test_the_host_program_uses_only_the_standard_library_and_itself() -> None:
    offenders = {
        f"{module_name(p)} imports {m}"
        for p in (DEPLOYS / "host").rglob("*.py")
        for m in imports(p)
        if m.split(".")[0] not in sys.stdlib_module_names
        and not m.startswith("deploys.host")
        and m != "__future__"
        # synapse_check runs under Synapse's own virtualenv, which is what it checks with.
        and not (p.name == "synapse_check.py" and m.split(".")[0] == "synapse")
    }
    assert offenders == set()


def test_the_checks_can_see_a_violation() -> None:
    # The helpers above read real files; make sure they resolve what the rules look for.
    assert "pyinfra.api" in imports(DEPLOYS / "facts" / "synapse.py")
    assert any(m.startswith("deploys.host") for m in imports(DEPLOYS / "host" / "apply.py"))
    assert graph()["deploys.synapse"]
