"""What tests/test_imports.py does not see: modules imported by name at run time
(`importlib.import_module("harmonia.x")`, a list of module names such as the CLI's
SUBCOMMAND_MODULES). Such an edge closes a cycle just as a written import does (e.g. a subcommand
module importing its argument types from `harmonia.cli`, which imports that subcommand by name)."""

from __future__ import annotations

import ast
from pathlib import Path

from test_imports import GRAPH, PACKAGE, PENDING_CYCLES, find_cycles, import_graph, layer, modules

# Modules whose by-name imports are exempt (none: `harmonia.cli` assembles the subcommands by name,
# and they take their argument types from the leaf `harmonia.cli_args`, so no cycle remains).
EXEMPT_BY_NAME: set[str] = set()


def named_imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the harmonia modules whose full dotted name appears in it as a string literal."""
    out: dict[str, set[str]] = {}
    for name, path in mods.items():
        if name in EXEMPT_BY_NAME and path.is_relative_to(PACKAGE):
            out[name] = set()
            continue
        strings = {n.value for n in ast.walk(ast.parse(path.read_text(), str(path)))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        out[name] = {s for s in strings if s in mods and s != name and s.startswith("harmonia.")}
    return out


def full_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = import_graph(mods)
    for m, targets in named_imports(mods).items():
        graph[m] = graph[m] | targets
    return graph


def test_no_cycles_through_modules_imported_by_name():
    assert find_cycles(full_graph(modules()), PENDING_CYCLES) == []


def test_no_upward_imports_by_name():
    graph = full_graph(modules())
    upward = sorted(f"{m} imports {t} by name" for m, ts in graph.items() for t in ts if layer(t) > layer(m))
    assert upward == []


def test_the_written_import_graph_misses_a_cycle_through_a_module_imported_by_name(tmp_path):
    pkg = tmp_path / "harmonia"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("import importlib\nMODS = ['harmonia.commands']\n"
                                "def main():\n    for m in MODS:\n        importlib.import_module(m)\n")
    (pkg / "commands.py").write_text("from harmonia.cli import MODS\n")
    mods = modules(pkg)
    assert find_cycles(import_graph(mods)) == []  # test_imports.py's view
    assert find_cycles(full_graph(mods)) == [["harmonia.cli", "harmonia.commands"]]


def test_the_written_graph_is_part_of_the_full_graph():
    graph = full_graph(modules())
    assert all(GRAPH[m] <= graph[m] for m in GRAPH)


def test_a_pending_cycle_does_not_hide_a_longer_one():
    # test_imports.py drops both edges of each pending pair, so a new cycle that runs through one of
    # them (train.cli -> train.pretrain -> X -> train.cli) would pass unseen; here every strongly
    # connected component must be exactly one of the pending pairs
    allowed = [sorted(pair) for pair in PENDING_CYCLES]
    assert [c for c in find_cycles(full_graph(modules())) if c not in allowed] == []


def test_the_exact_check_sees_a_cycle_through_a_pending_edge(tmp_path):
    pkg = tmp_path / "harmonia"
    (pkg / "train").mkdir(parents=True)
    for f in ("__init__.py", "x.py", "train/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "train" / "cli.py").write_text("from harmonia.train import pretrain\n")
    (pkg / "train" / "pretrain.py").write_text("from harmonia.train import cli\nfrom harmonia import x\n")
    (pkg / "x.py").write_text("from harmonia.train import cli\n")
    graph = full_graph(modules(pkg))
    pending = {("harmonia.train.cli", "harmonia.train.pretrain")}
    assert find_cycles(graph, pending) == []  # hidden by the pending pair
    assert find_cycles(graph) == [["harmonia.train.cli", "harmonia.train.pretrain", "harmonia.x"]]
