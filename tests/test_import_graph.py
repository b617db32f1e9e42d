"""The package's import graph has no cycles, counting imports inside function bodies.

A cycle hidden behind a function-local import still couples two modules: neither can be read,
tested or changed alone. The layout (DESIGN.md's module map, README "Where things live") is a
layered one, and this test is what keeps it that way. Run this file directly to print the graph.
"""
import ast
import sys
from pathlib import Path

PACKAGE = "bnprivacy"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """Every package module that `module` imports, at top level or inside any function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, path.name == "__init__.py")
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in candidates:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns every component with more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    cycles = strongly_connected(import_graph())
    assert not cycles, (
        "modules that import each other (directly or around a loop, function-local imports "
        f"included): {cycles}. Move the shared piece into a lower module both can import.")


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    # The finder itself must be able to fail: a loop a -> b -> a where b imports inside a function.
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import x\n    return x\n")
    known = {"pkg.a", "pkg.b"}
    graph = {name: imported_modules(name, tmp_path / f"{name[4:]}.py", known) for name in known}
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"]]


def test_package_init_files_import_nothing():
    # `import bnprivacy.runs.disk` must not drag in Ray, Opacus or torch through an __init__.
    for name, path in package_modules().items():
        if path.name == "__init__.py" and name != PACKAGE:
            tree = ast.parse(path.read_text())
            imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
            assert not imports, f"{path} imports {len(imports)} things; keep package __init__ files empty"


def test_only_the_ray_executor_imports_ray():
    for name, path in package_modules().items():
        tree = ast.parse(path.read_text())
        imports_ray = any(
            (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and node.level == 0
                and (node.module or "").split(".")[0] == "ray")
            for node in ast.walk(tree))
        assert not imports_ray or name == f"{PACKAGE}.runs.ray", f"{name} imports ray"


if __name__ == "__main__":
    graph = import_graph()
    for name in sorted(graph):
        print(f"{name}: {', '.join(sorted(graph[name])) or '-'}")
    print("cycles:", strongly_connected(graph) or "none")
    sys.exit(1 if strongly_connected(graph) else 0)
