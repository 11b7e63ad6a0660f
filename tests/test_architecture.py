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
    "cli": {"__init__", "core", "data", "store", "training", "lasso", "stages", "config", "attribution", "status"},
    "status": {"core", "data"},
    "__main__": {"cli"},
    "__init__": {"api"},
}
# Imports inside functions (documented where they are): the CLI loads a command's stage
# only when it runs; ``dmflow.load_run`` imports the API on first use.
LAZY_IMPORTS_ALLOWED = {"dmflow.cli.rules", "dmflow.cli.tools", "dmflow"}
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
            if "." in func_name and func_name.rsplit(".", 1)[1].startswith("on_"):
                continue  # a Lightning hook: Lightning fixes its signature and calls it positionally
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


def test_no_module_imports_relatively():
    """``from . import x`` hides which layer a module reaches into; every import names its dmflow module."""
    relative = [
        f"{name}:{node.lineno} imports {'.' * node.level}{node.module or ''}"
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert not relative, "\n".join(relative)


def test_no_stage_imports_another_stage():
    """A stage reads other stages' files through the readers of ``dmflow.store.formats``, never their module."""
    crossing = [
        f"{name}:{line} imports {target}"
        for name, tree in MODULES.items()
        if part(name) == "stages"
        for target, line in imports(tree, top_level_only=False)
        if part(target) == "stages" and target.rsplit(".", 1)[0] != name and target != "dmflow.stages"
    ]
    assert not crossing, "\n".join(crossing)


def test_the_import_graph_the_checks_walk_is_the_real_one():
    """A canary: were ``imports`` to find nothing (a changed AST, a wrong prefix), the checks above would pass
    on an empty graph."""
    edges = {(name, target) for name, tree in MODULES.items() for target, _ in imports(tree, top_level_only=False)}
    assert len(MODULES) > 50 and len(edges) > 100
    assert ("dmflow.stages.fit", "dmflow.store.formats") in edges
    assert ("dmflow.store.formats", "dmflow.core.io") in edges
    bad = ast.parse("from dmflow.stages.fit import merge_fit\nfrom . import x\n")
    assert imports(bad, top_level_only=True) == [("dmflow.stages.fit", 1)]


def test_the_lasso_allocates_the_buffers_the_budgets_count():
    """``dmflow.core.budgets`` sizes the jobs at parse time without importing the solvers, from buffer sizes
    defined there only: the lasso package imports each one and defines none of its own."""
    names = {"GRAM_COLS", "CROSS_TARGETS", "BUCKET_BYTES", "UNION_BYTES", "CD_BUFFER_ENTRIES", "DENSE_MAX_N"}
    imported, defined = set(), []
    for path in sorted((PACKAGE / "lasso").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module == "dmflow.core.budgets":
                imported |= {alias.name for alias in node.names} & names
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            defined += [f"{path.name}: {t.id}" for t in targets if isinstance(t, ast.Name) and t.id in names]
    assert defined == []  # a second definition could drift from the budget
    assert imported == names  # each buffer size is used by the lasso package


HEAVY = ("torch", "numba", "lightning", "scipy", "cvxpy", "matplotlib")
"""What parsing the workflow must not import (each costs a job's start, not a dry run's; Snakemake imports pandas)."""


def test_parsing_the_workflow_imports_no_torch(tmp_path):
    """``snakemake -n`` of the default config parses every rule file (``rules/common.smk`` sizes the jobs):
    it must stay light, so a dry run costs Snakemake's time, not torch's."""
    import shutil
    import subprocess
    import sys

    from helpers import Workflow

    flow = Workflow(tmp_path)
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--cores", "1", "--config", "results=results"],
        cwd=tmp_path,
        env=flow.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "dmflow.core.budgets" in loaded and "snakemake" in loaded  # the canary: the list is the real one
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith("dmflow.stages"))
    assert not heavy, f"parsing the workflow imported {heavy[:10]}"
