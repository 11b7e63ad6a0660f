"""The package's shape, as a newcomer reads it from the tree: layers that import downwards only,
no cycles, stage files written only by the stages, keyword-only arguments past the third.

Layers, top to bottom: ``cli``/``api``/``config`` -> ``stages`` -> the computation packages
(``data``, ``store``, ``training``, ``lasso``, ``evaluation``, ``analysis``, ``attribution``, ``plots``) -> ``core``.
"""

from __future__ import annotations

import ast
import re

import pytest

from helpers import REPO

SRC = REPO / "src"
PACKAGE = SRC / "dmflow"

# What each part may import from dmflow (itself always).
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "store": {"core"},
    "training": {"core", "data"},
    "lasso": {"core"},
    "evaluation": {"core", "store", "lasso"},
    "analysis": {"core"},
    "attribution": {"core", "training"},
    "plots": set(),
    "stages": {"core", "data", "store", "training", "lasso", "evaluation", "analysis", "attribution", "plots"},
    "config": {"core", "data", "store", "training", "attribution"},
    "api": {"core", "store", "evaluation", "analysis", "stages"},
    "cli": {"__init__", "core", "data", "store", "training", "lasso", "stages", "config", "attribution"},
    "__main__": {"cli"},
    "__init__": {"api"},
}
# Imports inside functions (documented where they are): the CLI loads a command's stage
# only when it runs; ``dmflow.load_run`` imports the API on first use.
LAZY_IMPORTS_ALLOWED = {"dmflow.cli", "dmflow"}
# The writers of ``dmflow.core.io`` and the ways to write a file without them.
WRITERS = {"atomic_path", "atomic_save_npz", "atomic_save_npy", "atomic_save_json", "write_table", "save_figure"}
WRITE_METHODS = {
    "save",
    "savez",
    "savez_compressed",
    "to_parquet",
    "to_csv",
    "savefig",
    "write_text",
    "write_bytes",
    "open_memmap",
    "dump",
}
MAY_WRITE = {"dmflow.core.io"}  # defines the writers; stages/ and api.py may call them


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def part(module: str) -> str:
    """The layer part of a module: ``dmflow.lasso.path`` -> ``lasso``, ``dmflow`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(tree: ast.Module, *, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported dmflow module, line) of every import; only those at module level with ``top_level_only``."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # TYPE_CHECKING blocks import nothing at run time
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dmflow"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in MODULES else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("dmflow")]
    return found


MODULES = modules()


def test_every_module_imports_only_from_the_layers_below_it():
    wrong = []
    for name, tree in MODULES.items():
        for target, line in imports(tree, top_level_only=False):
            if part(target) != part(name) and part(target) not in ALLOWED[part(name)]:
                wrong.append(f"{name}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    graph = {
        name: {t for t, _ in imports(tree, top_level_only=False) if t in MODULES and t != name}
        for name, tree in MODULES.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt) :] + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_no_import_between_dmflow_modules_hides_inside_a_function():
    hidden = []
    for name, tree in MODULES.items():
        if name in LAZY_IMPORTS_ALLOWED:
            continue
        top = set(imports(tree, top_level_only=True))
        hidden += [
            f"{name}:{line} imports {t} inside a function"
            for t, line in imports(tree, top_level_only=False)
            if (t, line) not in top
        ]
    assert not hidden, "\n".join(hidden)


def _writes(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in WRITERS or (isinstance(func, ast.Attribute) and name in WRITE_METHODS):
            found.append(f"{name}() at line {node.lineno}")
        if (
            name == "open"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and set(str(node.args[1].value)) & set("wax+")
        ):
            found.append(f"open(..., {node.args[1].value!r}) at line {node.lineno}")
    return found


def test_only_the_stages_write_stage_files():
    writers = {
        name: _writes(tree)
        for name, tree in MODULES.items()
        if part(name) not in ("stages", "api") and name not in MAY_WRITE
    }
    assert {name: w for name, w in writers.items() if w} == {}
    assert _writes(MODULES["dmflow.stages.collect"]), "the check must see the stages' writes"


def test_there_is_one_stage_module_per_rules_file_and_one_stage_function_per_rule():
    rules = {p.stem: p.read_text() for p in (REPO / "rules").glob("*.smk") if p.stem != "common"}
    stages = {n.removeprefix("dmflow.stages."): t for n, t in MODULES.items() if n.startswith("dmflow.stages.")}
    assert set(rules) == set(stages)
    for stem, text in rules.items():
        functions = {f.name for f in stages[stem].body if isinstance(f, ast.FunctionDef)}
        for rule in (line.split()[1].rstrip(":") for line in text.splitlines() if line.startswith("rule ")):
            assert rule in functions, f"rules/{stem}.smk: rule {rule} has no dmflow.stages.{stem}.{rule}"
            assert re.search(rf"dmflow (--\S+ \S+ )*{rule.replace('_', '-')} ", text), (  # global options first
                f"rule {rule} should call `dmflow {rule.replace('_', '-')}`"
            )


def _public_functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (not item.name.startswith("_") or item.name == "__init__"):
                    yield f"{node.name}.{item.name}", item


def test_public_functions_take_arguments_past_the_third_by_keyword():
    """A swapped pair of paths then fails loudly instead of writing the wrong file."""
    offenders = []
    for name, tree in MODULES.items():
        if name.endswith("_kernels") or name == "dmflow.training.simd":
            continue  # numba kernels and intrinsics take positional arguments only
        for func_name, func in _public_functions(tree):
            positional = [a.arg for a in func.args.posonlyargs + func.args.args if a.arg not in ("self", "cls")]
            if len(positional) > 3:
                offenders.append(f"{name}.{func_name}({', '.join(positional)})")
    assert not offenders, "\n".join(offenders)


def test_public_functions_say_what_they_do():
    missing = [
        f"{name}.{func_name}"
        for name, tree in MODULES.items()
        if name != "dmflow.cli"
        for func_name, func in _public_functions(tree)
        if ast.get_docstring(func) is None and "." not in func_name
    ]
    assert not missing, "\n".join(missing)


def test_the_package_never_imports_snakemake():
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] == "snakemake" for n in names), name
