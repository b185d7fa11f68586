"""The package's shape: what sd_cli imports, and that its modules form no import cycle.

Both are read from the source (every import statement, at module level or inside a function),
so a lazy import that would close a cycle or pull in a test-only dependency is caught too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sd_cli"
# The test extras (pyproject.toml); timm is also the `depth` extra, imported only to build MiDaS.
TEST_ONLY = {"pytest", "diffusers", "transformers", "accelerate"}



def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module an import statement in `path` names (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported_names(path) if m in modules and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_test_only_dependency():
    offenders = {module_name(p): sorted(n for n in imported_names(p) if n.split(".")[0] in TEST_ONLY)
                 for p in PACKAGE.rglob("*.py")}
    assert {m: names for m, names in offenders.items() if names} == {}


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packaged_files_are_found_through_the_package():
    from sd_cli.loading.packaged import builtin_checkpoint, packaged_config

    assert builtin_checkpoint().is_file() and builtin_checkpoint().parent.parent == PACKAGE
    assert packaged_config("v1-inference.yaml").read_text().startswith("model:")
