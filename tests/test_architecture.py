"""The layering docs/architecture.md promises: no import circle, imports only point down a layer.

Every import counts, the ones inside functions too: a lazy import is still a dependency a
newcomer has to hold in their head, and so is one for type hints under ``if TYPE_CHECKING:``.
"""

import ast
from pathlib import Path

import networkx as nx

import nhlcli

PACKAGE = Path(nhlcli.__file__).parent

# Lowest layer first; a module may import from its own layer or any layer before it.
LAYERS = [  # docs/architecture.md's table, row by row
    ["errors", "text", "jsonio", "atomic", "locks", "paths", "memory", "devices", "distributed", "progress"],
    ["taxonomy"],
    ["model", "profiling"],
    ["data"],
    ["evaluation", "metrics", "risk"],
    ["training"],
    ["experts", "graft"],
    ["gates"],
    ["export", "prediction", "demo"],
    ["cli", "__main__", "__init__"],
]
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The nhlcli modules a file imports, resolving `from package import module`."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from package import module` depends on the module, not on the package's __init__.
            names = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            if name in known and name != this:
                found.add(name)
    return found


def import_graph() -> nx.DiGraph:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        for target in imported_modules(path, set(files)):
            graph.add_edge(name, target)
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYER_OF[top]


def test_every_module_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in import_graph() if "." in m} - set(LAYER_OF))
    assert not unplaced, f"add these to LAYERS here and to docs/architecture.md: {unplaced}"


def test_no_import_circle():
    circles = list(nx.simple_cycles(import_graph()))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles[:5])


def test_imports_point_down_the_layers():
    upward = [
        f"{source} -> {target}"
        for source, target in import_graph().edges
        if "." in source and "." in target and layer(target) > layer(source)
    ]
    assert not upward, "imports pointing up a layer: " + ", ".join(sorted(upward))


def test_docs_architecture_table_lists_these_layers():
    """docs/architecture.md draws the layers a newcomer reads; it must be the ones checked here."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    documented: dict[int, set[str]] = {}
    for rank, cells in re.findall(r"^\| (\d+) \| ([^|]+) \|", text, flags=re.M):
        names = {name.rstrip("/").removesuffix(".py") for name in re.findall(r"`([^`]+)`", cells)}
        documented.setdefault(int(rank), set()).update(names)
    checked = {rank: set(names) - {"__main__", "__init__"} for rank, names in enumerate(LAYERS)}
    assert documented == checked


def test_the_command_line_starts_without_torch_and_its_static_defaults_match_the_library():
    """Every ``nhl`` call imports the CLI to build its help; torch and timm load only in the
    command that runs (seconds on every call otherwise). The facts the CLI therefore spells out
    itself must be the library's."""
    import subprocess
    import sys

    probe = "import sys, nhlcli.cli; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"

    from nhlcli.cli.demo import DEMO_HELP
    from nhlcli.cli.train import EVAL_OPTIONS
    from nhlcli.data.registry import DEFAULT_DATASET
    from nhlcli.demo import DEFAULT_DEMO, DEMOS, REPORT_FILE, TRAIN_BUDGET_S

    assert EVAL_OPTIONS["data"].default == DEFAULT_DATASET == DEFAULT_DEMO == "fashion-mnist"
    assert DEMO_HELP["data"] == " or ".join(DEMOS)
    assert DEMO_HELP["workdirs"] == " or ".join(task.workdir for task in DEMOS.values())
    assert DEMO_HELP["max_epochs"] == ", ".join(f"{t.max_epochs} on {name}" for name, t in DEMOS.items())
    assert DEMO_HELP["budget_minutes"] == round(TRAIN_BUDGET_S / 60) and DEMO_HELP["report"] == REPORT_FILE
