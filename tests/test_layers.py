"""Imports point one way: a part of gasp_plugin reads only the parts ranked below it.

geometry <- data <- models <- core <- recipe <- train; probe reads recipe and below, not train;
bench, integrations and the demo may use train; the command line may use everything. Every
``import`` in every module counts, at module level and inside functions alike.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gasp_plugin"

# first component under gasp_plugin -> rank; an import must point to a lower rank, or stay in its part
RANKS = {
    "constants": 0,  # imports nothing from gasp_plugin
    "errors": 0,  # the command-line error rule; imports nothing from gasp_plugin
    "assets": 0,  # bundled files and their paths
    "geometry": 1,
    "data": 2,
    "models": 3,
    "core": 4,
    "recipe": 5,
    "train": 6,
    "probe": 6,
    "bench": 7,
    "integrations": 7,
    "demo": 7,
    "env": 7,  # `gasp env`: versions and what is usable here
    "eval": 7,  # `gasp export` and `gasp eval`: after training
    "cli": 8,
}
EXEMPT = {"gasp_plugin"}  # the package's lazy table of public names


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_table() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _imports(path: Path, module: str):
    """``(line, imported module)`` for every import of a gasp_plugin module in ``path``."""
    is_package = path.name == "__init__.py"
    lazy = _lazy_table()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target == "gasp_plugin":  # `from gasp_plugin import X`: the submodule or the lazy name's module
                for alias in node.names:
                    yield node.lineno, lazy.get(alias.name, f"gasp_plugin.{alias.name}")
            else:
                yield node.lineno, target


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "gasp_plugin" and len(parts) > 1 else None


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_has_a_rank():
    parts = {_part(_module_name(p)) for p in _modules()} - {None}
    assert parts <= set(RANKS), f"rank these parts in RANKS: {sorted(parts - set(RANKS))}"


def test_imports_point_down():
    wrong = []
    for path in _modules():
        module = _module_name(path)
        if module in EXEMPT:
            continue
        own = _part(module)
        for line, target in _imports(path, module):
            other = _part(target)
            if other is None or other == own:
                continue
            if other not in RANKS or RANKS[other] >= RANKS[own]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                             f"({own}, rank {RANKS[own]} -> {other}, rank {RANKS.get(other, '?')})")
    assert not wrong, "imports that point the wrong way:\n" + "\n".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("from gasp_plugin.train.recipe import load_recipe\n", ["gasp_plugin.train.recipe"]),
    ("def f():\n    import gasp_plugin.data.scene as s\n", ["gasp_plugin.data.scene"]),
    ("from gasp_plugin import GaspTrainer\n", ["gasp_plugin.train.trainer"]),
    ("from ..train import launch\n", ["gasp_plugin.train"]),
])
def test_the_check_sees_every_kind_of_import(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [t for _, t in _imports(path, "gasp_plugin.probe.m")] == expected


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycles():
    """Within a part too (``train.launch`` imports ``train.assemble``, never the other way)."""
    modules = {_module_name(p): p for p in _modules()}
    graph = {m: {t for _, t in _imports(p, m) if t in modules and t != m} for m, p in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
