"""The proxy's layout as a contract: its rooms import each other without a cycle (function-level
imports counted), each only the rooms below it, and ``prysmai._proxy.cli`` -- imported on every
``prysmai`` invocation -- pulls in nothing beyond the standard library and its own light modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "prysmai" / "_proxy"
ROOT = "prysmai._proxy"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``if TYPE_CHECKING:``: never run, so not an import at run time."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ``prysmai._proxy`` it imports at run time, wherever the import
    stands (module level or inside a function)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import mod` imports the module; `from mod import name` the module itself
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_rooms_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40 and f"{ROOT}.server.app" in graph  # the walk found the package
    assert f"{ROOT}.store.writer" in graph[f"{ROOT}.server.app"]  # and its imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


#: The rooms from the top down: a room imports only rooms below it.
LAYERS = ("cli", "server", "export", "web", "api", "store", "config", "asgi")


def test_each_room_imports_only_the_rooms_below_it() -> None:
    graph = import_graph()
    rooms = {name: name.split(".")[2] for name in graph if name.count(".") >= 2}
    assert set(rooms.values()) == set(LAYERS)  # every module sits in a room (or is asgi.py)
    upward = sorted(
        (module, target)
        for module, imports in graph.items()
        for target in imports
        if module in rooms and target in rooms and LAYERS.index(rooms[target]) < LAYERS.index(rooms[module])
    )
    assert not upward


def test_the_cli_package_is_light_to_import() -> None:
    code = (
        "import sys, prysmai._proxy.cli as cli, argparse\n"
        "cli.register(argparse.ArgumentParser().add_subparsers())\n"
        "heavy = sorted(m for m in ('sqlite3', 'uvicorn', 'aiohttp', 'httpx', 'prysmai._proxy.store',"
        " 'prysmai._proxy.server.app') if m in sys.modules)\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
