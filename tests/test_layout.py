"""The package's shape: imports point one way (no cycles, function-level imports included), no module over 500
lines, and the settings load without torch (so `--help` and config checks are instant)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scalegpt"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and not name.startswith(t + "."):  # a package's own children
                    deps.add(t)
        # Importing a.b.c runs a and a.b first: a module depends on the packages above what it imports.
        for d in list(deps):
            parts = d.split(".")
            deps |= {".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in modules}
        deps.discard(name)
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
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


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_the_cli_or_the_trainer():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("scalegpt.cli") or name == "scalegpt.__main__":
            continue
        assert not any(d.startswith("scalegpt.cli") for d in deps), f"{name} imports the CLI"
        if name != "scalegpt.train":
            assert "scalegpt.train" not in deps, f"{name} imports the trainer"
    assert "scalegpt.distributed" not in graph["scalegpt.train"], "the trainer goes through its Strategy"


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long


def test_settings_load_without_torch():
    code = ("import sys; import scalegpt.config as c; c.load_config('shakespeare-char', {'train.max_steps': 3}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
