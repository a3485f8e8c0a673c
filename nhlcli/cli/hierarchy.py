"""``nhl hierarchy``: build, show, validate and summarise category trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from nhlcli.cli.common import (
    console,
    friendly_errors,
    json_for_terminal,
    parse_list,
    print_json,
    shown,
    whole_number,
)
from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import Tree
from nhlcli.text import counted

hierarchy_app = typer.Typer(
    help=(
        "Category trees: build one from WordNet, imagenet-superclass, BREEDS, an LLM or flat; "
        "show, validate and summarise it. TREE arguments take a file or a shipped tree's name "
        "(see 'nhl hierarchy list')."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

TREE_ARG = typer.Argument(..., help="A tree file (.json) or the name of a shipped tree.")


def _stats_table(stats: dict) -> Table:
    table = Table(
        title=f"{shown(stats['name'] or 'tree')}: {counted(stats['classes'], 'class')}, "
        f"{counted(stats['levels'], 'level')}"
    )
    for col in (
        "level",
        "nodes",
        "fan-out min/mean/max",
        "classes per node min/mean/max",
        "size CV",
        "chains",
    ):
        table.add_column(col, justify="right")
    for row in stats["per_level"]:
        table.add_row(
            str(row["level"]),
            str(row["nodes"]),
            f"{row['fanout_min']} / {row['fanout_mean']} / {row['fanout_max']}",
            f"{row['classes_per_node_min']} / {row['classes_per_node_mean']} / {row['classes_per_node_max']}",
            f"{row['size_cv']:.2f}",
            str(row["single_child_parents"]),
        )
    table.caption = "size CV: spread of group sizes (0 = balanced); chains: nodes with a single child"
    return table


@hierarchy_app.command("build")
@friendly_errors
def build(
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the tree (JSON)."),
    source: str = typer.Option(
        "wordnet",
        "--source",
        "-s",
        help="wordnet | superclass (imagenet-superclass, CIFAR-100's 20) | breeds | llm | hybrid | flat | "
        "induced (from a trained flat model's classifier, NBDT) | emoji (Unicode's groups and subgroups).",
    ),
    classes: str = typer.Option(
        "fashion-mnist",
        "--classes",
        "-c",
        help="A preset (imagenet-1k, fashion-mnist, cifar-100, emoji), a text/JSON file of class ids or "
        "names, or an ImageFolder directory.",
    ),
    levels: int | None = typer.Option(
        None, "--levels", "-l", help="Levels of the tree (1-4); default 3 (superclass 2, flat 1)."
    ),
    groups: str | None = typer.Option(
        None,
        "--groups",
        help="Groups per level above the classes, e.g. 10,100 for 3 levels (wordnet, breeds, "
        "hybrid); default grows geometrically. See the result with 'nhl hierarchy stats'.",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Name stored in the tree (default from the inputs)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="LLM model name (llm, hybrid; default gpt-4o-mini), or the flat model file (induced).",
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="OpenAI-compatible server URL (llm, hybrid); key from OPENAI_API_KEY."
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="JSON cache of LLM answers; a warm cache rebuilds offline, byte-identical."
    ),
    max_retries: int = typer.Option(3, "--max-retries", help="Times an invalid LLM answer is sent back."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for each LLM answer."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of tables."),
) -> None:
    """Build a category tree for a class list and write it as JSON."""
    from nhlcli.paths import check_distinct_outputs, check_output_file
    from nhlcli.taxonomy.build import build_tree_for, llm_settings
    from nhlcli.taxonomy.classes import class_list_path

    settings = llm_settings(None if source == "induced" else model, base_url, cache, max_retries, timeout)
    # every input, so that neither output replaces one; checked before any work starts
    class_file = class_list_path(classes) if classes.strip() else None
    model_file = model if source == "induced" else None
    if source == "induced" and not model:
        raise NhlError("the induced source needs --model FILE: a flat model trained with 'nhl train --flat'")
    inputs = [class_file, model_file]
    check_output_file(output, inputs, label="--output")
    check_output_file(cache, inputs, label="--cache")  # read and rewritten: an input and an output
    check_distinct_outputs({"--output": output, "--cache": cache})
    classifier = None
    if model_file is not None:
        from nhlcli.model.loading import classifier_weights

        classifier = classifier_weights(model_file)
    tree = build_tree_for(
        source,
        classes,
        levels=levels,
        groups=parse_list(groups, "--groups", whole_number, "10,100") if groups else None,
        name=name,
        llm=settings,
        classifier=classifier,
        classifier_file=model_file,
    )
    tree.save(output)
    _print_built(tree, output, source, bool(groups), as_json)


def _print_built(tree: Tree, output: Path, source: str, groups_given: bool, as_json: bool) -> None:
    """What ``hierarchy build`` reports: the tree's statistics, and the groups per level it got
    where they differ from the ``--groups`` asked for."""
    from nhlcli.taxonomy.build import built_groups, requested_groups

    stats = tree.stats()
    asked, built = (requested_groups(tree), built_groups(tree)) if groups_given else (None, None)
    if as_json:
        extra = {"groups_requested": asked, "groups_built": built} if groups_given else {}
        print_json({"output": str(output), **stats, **extra})
        return
    console.print(
        f"wrote [bold]{shown(output)}[/]: {counted(tree.num_classes, 'class')}, "
        f"{counted(tree.levels, 'level')} ({source})"
    )
    if asked is not None and asked != built:
        console.print(
            f"--groups {','.join(map(str, asked))} gave {','.join(map(str, built))} groups per level: "
            "groups far larger than the target size are split to keep sizes balanced",
            highlight=False,
            soft_wrap=True,
        )
    console.print(_stats_table(stats))


@hierarchy_app.command("show")
@friendly_errors
def show(
    tree_file: str = typer.Argument(
        ..., help="A tree file (.json), the name of a shipped tree, or a model file (.safetensors)."
    ),
    depth: int | None = typer.Option(
        None,
        "--depth",
        "-d",
        help="Deepest level to draw, from 1 (the top level) to the tree's levels (default: all for small "
        "trees, collapsed for large).",
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="rich (terminal) | dot | mermaid | json | newick (phylogenetics and tree-distance tools) | "
        "png | svg (pictures) [default: from the -o file's extension, else rich].",
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Write dot/mermaid/json/newick/png/svg here (.dot, .mmd, .json, .nwk, .png, .svg).",
    ),
    parent: Path | None = typer.Option(
        None, "--parent", help="For an expert file cut before parents were recorded: its parent model file."
    ),
    as_json: bool = typer.Option(False, "--json", help="For pictures: print what was drawn as JSON."),
) -> None:
    """Draw a tree in the terminal, as a picture (png, svg), or export it as dot, Mermaid, JSON or Newick.

    For an expert model file the picture is its parent's tree with the kept paths highlighted.
    Newick writes every class of the tree a model classifies (an expert's own classes): leaves
    labelled with the class names when they are unique, else with the class ids, inner nodes
    with their names, quoted where Newick needs it. Names are printed with control characters
    escaped (a name cannot drive the terminal).
    """
    from nhlcli.paths import check_output_file
    from nhlcli.taxonomy.render import check_show_depth, printable_tree, render_text, to_rich, write_tree
    from nhlcli.taxonomy.sources import tree_source_file

    check_output_file(output, [tree_source_file(tree_file), parent], label="--output")
    fmt = show_format(fmt, output)
    _check_show_options(fmt, output, depth)
    if fmt == "newick":  # the tree a model classifies: Newick has no way to highlight kept paths
        tree, highlight = _any_tree(tree_file), None
    else:
        tree, highlight = _tree_and_highlight(tree_file, parent)
    check_show_depth(tree, depth)
    if output is not None:
        written = write_tree(tree, output, fmt, depth, highlight)
        _print_written(written, output, bool(highlight), as_json)
    elif fmt == "json":  # the data itself, as JSON text (which escapes control characters)
        typer.echo(json_for_terminal(render_text(tree, fmt, depth)), nl=False)
    elif fmt == "rich":  # for people: names with control characters escaped
        console.print(to_rich(printable_tree(tree), depth))
    else:
        typer.echo(render_text(printable_tree(tree), fmt, depth), nl=False)


def _check_show_options(fmt: str, output: Path | None, depth: int | None) -> None:
    """Refuse options of ``hierarchy show`` that do not go together, before any tree is read."""
    from nhlcli.taxonomy.picture import PICTURE_FORMATS

    if fmt in PICTURE_FORMATS and output is None:
        raise NhlError(f"--format {fmt} draws a picture: give the file with -o tree.{fmt}")
    if fmt == "rich" and output is not None:
        raise NhlError("--output needs --format dot, mermaid, json, newick, png or svg")
    if depth is not None and depth < 1:
        raise NhlError(f"--depth {depth}: levels count from 1, the top level; give 1 or more")
    if fmt == "newick" and depth is not None:
        raise NhlError("--depth does not apply to --format newick: a Newick tree holds every class")


def _print_written(written: dict[str, Any], output: Path, highlighted: bool, as_json: bool) -> None:
    """What ``hierarchy show -o`` reports: for a picture what was drawn (as JSON with ``--json``)."""
    if "rows" not in written:
        console.print(f"wrote {shown(output)}")
    elif as_json:
        print_json(written)
    else:
        levels = "level 1" if written["depth"] == 1 else f"levels 1-{written['depth']}"
        kept = " and kept paths" if highlighted else ""
        console.print(f"wrote {shown(output)} ({counted(written['rows'], 'row')}, {levels}{kept})")


# what ``hierarchy show`` writes for each file extension, when --format is left out
EXTENSION_FORMATS = {
    ".dot": "dot",
    ".gv": "dot",
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".json": "json",
    ".nwk": "newick",
    ".newick": "newick",
    ".png": "png",
    ".svg": "svg",
}


def show_format(fmt: str | None, output: Path | None) -> str:
    """The format ``hierarchy show`` writes: ``--format``, else the output's extension, else rich.

    A format that disagrees with the output's extension is refused: ``-f png -o tree.svg`` would
    write PNG bytes into a file every viewer opens as SVG.
    """
    from nhlcli.taxonomy.picture import PICTURE_FORMATS
    from nhlcli.taxonomy.render import FORMATS

    choices = ", ".join(FORMATS + PICTURE_FORMATS)
    if fmt is not None and fmt not in FORMATS + PICTURE_FORMATS:
        raise NhlError(f"--format {fmt!r}: choose one of {choices}")
    if output is None:
        return fmt or "rich"
    suffix = output.suffix.lower()
    implied = EXTENSION_FORMATS.get(suffix)
    if fmt is None:
        if implied is None:
            raise NhlError(
                f"--output {output}: cannot tell the format from {suffix or 'no extension'}; "
                f"name the file {', '.join(EXTENSION_FORMATS)} or give --format ({choices})"
            )
        return implied
    if implied is not None and implied != fmt:
        raise NhlError(
            f"--format {fmt} writes {fmt} but --output {output} is named {suffix}; name the file "
            f"{_extension(fmt)} or give --format {implied}"
        )
    if implied is None and fmt in PICTURE_FORMATS:
        raise NhlError(f"--format {fmt} writes a {fmt} picture: name the file {_extension(fmt)}")
    return fmt


def _extension(fmt: str) -> str:
    return " or ".join(ext for ext, name in EXTENSION_FORMATS.items() if name == fmt)


def _tree_and_highlight(spec: str, parent: Path | None) -> tuple[Tree, list[str] | None]:
    """The tree to draw and, for an expert file, the expert's nodes to highlight in it."""
    from nhlcli.taxonomy import resolve_tree

    if not spec.endswith(".safetensors"):
        return resolve_tree(spec), None
    from nhlcli.model.files import read_metadata

    meta = read_metadata(spec)
    tree = Tree.from_dict(meta["tree"])
    lineage = meta.get("expert")
    if not lineage:
        return tree, None
    if parent is not None:
        parent_tree = Tree.from_dict(read_metadata(parent)["tree"])
    elif lineage.get("parent_tree"):
        parent_tree = Tree.from_dict(lineage["parent_tree"])
    else:
        raise NhlError(
            f"{spec} does not record its parent's tree; pass the parent with --parent PARENT.safetensors"
        )
    return parent_tree, list(tree.iter_nodes())


def _any_tree(spec: str) -> Tree:
    """A tree file, a shipped tree's name, or the tree inside a model file."""
    from nhlcli.taxonomy import resolve_tree

    if spec.endswith(".safetensors"):
        from nhlcli.model.files import read_metadata

        return Tree.from_dict(read_metadata(spec)["tree"])
    return resolve_tree(spec)


@hierarchy_app.command("compare")
@friendly_errors
def compare(
    first: str = typer.Argument(..., help="A tree file, a shipped tree's name, or a model file."),
    second: str = typer.Argument(..., help="The tree to compare it with, over the classes both hold."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """How far two trees agree, over the classes both hold: each level's grouping (adjusted Rand
    index, adjusted mutual information; 1 = the same, 0 = chance), over every pair of classes the
    Spearman correlation of how deep their lowest common ancestor sits, and the Robinson-Foulds
    distance of their topologies on rooted clusters (the class sets below inner nodes, with
    single-child chains counted once): the clusters found in one tree only, raw and divided by
    the clusters of both (0 = same topology, 1 = no group in common). Classes only one tree
    holds are dropped, and the output says how many."""
    from nhlcli.taxonomy.compare import compare_trees

    report = compare_trees(_any_tree(first), _any_tree(second), shared_classes=True)
    if as_json:
        print_json(report)
        return
    dropped_a, dropped_b = report["classes_dropped_a"], report["classes_dropped_b"]
    if dropped_a or dropped_b:
        console.print(
            f"compared over the {counted(report['classes'], 'class')} both trees hold: dropped "
            f"{dropped_a} only in {shown(report['a'] or 'the first')}, {dropped_b} only in "
            f"{shown(report['b'] or 'the second')}",
            highlight=False,
        )
    table = Table(
        title=f"{shown(report['a'])} against {shown(report['b'])} ({counted(report['classes'], 'class')})"
    )
    for column in ("level", "groups", "ARI", "AMI"):
        table.add_column(column, justify="right")
    for row in report["per_level"]:
        other = "-" if row["level_b"] is None else str(row["level_b"])
        table.add_row(
            f"{row['level_a']} / {other}",
            f"{row['groups_a']} / {row['groups_b']}",
            f"{row['ari']:.3f}",
            f"{row['ami']:.3f}",
        )
    console.print(table)
    rho = report["lca_depth_spearman"]
    said = "undefined (a flat tree relates every pair alike)" if rho is None else f"{rho:.3f}"
    console.print(f"lowest-common-ancestor depth, Spearman over {report['pairs']:,} class pairs: {said}")
    rf = report["robinson_foulds"]
    console.print(
        f"Robinson-Foulds distance on rooted clusters: {rf['distance']} "
        f"(max {rf['max']}, normalised {rf['normalised']:.3f})",
        highlight=False,
    )


@hierarchy_app.command("resolve")
@friendly_errors
def resolve(
    tree_file: str = typer.Argument(
        ...,
        help="A tree file (.json), a shipped tree's name, or a model file (.safetensors) to read its tree.",
    ),
    names: list[str] = typer.Argument(
        ..., help="Names as --classes takes them: classes, inner nodes, or WordNet concepts ('shark')."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print each name's classes as JSON."),
) -> None:
    """What each name means as classes of a tree: the same resolution cutout, train, eval and
    --attend use. Names that are no node of a WordNet tree resolve through WordNet's hyponyms."""

    tree = _any_tree(tree_file)
    labels = [label for name in names for label in parse_list(name, "NAME")]
    selection = tree.select(labels, option="NAME")
    if as_json:
        print_json(
            {"names": selection.to_dict(), "classes": list(selection.classes), "notes": selection.notes(tree)}
        )
        return
    for match in selection.matches:
        kept = [tree.node(c).name for c in match.classes]
        listed = ", ".join(kept[:10]) + (f", ... ({len(kept)} in all)" if len(kept) > 10 else "")
        console.print(
            f"[bold]{shown(match.name)}[/] -> {counted(len(kept), 'class')} "
            f"({shown(match.how)}): {shown(listed)}",
            highlight=False,
        )
    for note in selection.notes(tree):
        console.print(shown(note), highlight=False)
    if len(selection.matches) > 1:
        console.print(f"together: {counted(len(selection.classes), 'class')}")


@hierarchy_app.command("validate")
@friendly_errors
def validate(
    tree_file: str = TREE_ARG,
    classes: str | None = typer.Option(
        None,
        "--classes",
        "-c",
        help="Also check the tree's classes against a preset, class-list file or ImageFolder dataset.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check a tree file (and optionally that it fits a dataset); exit 1 with the reason if not."""
    from nhlcli.taxonomy import load_class_list, resolve_tree
    from nhlcli.taxonomy.match import match_classes

    tree = resolve_tree(tree_file)
    if classes is not None:
        match_classes(tree, load_class_list(classes))
    result = {"valid": True, "name": tree.name, "classes": tree.num_classes, "levels": tree.levels}
    if as_json:
        print_json(result)
    else:
        fits = f", matches {shown(classes)}" if classes else ""
        console.print(
            f"[green]valid[/]: {counted(tree.num_classes, 'class')}, {counted(tree.levels, 'level')}{fits}"
        )


@hierarchy_app.command("stats")
@friendly_errors
def stats(
    tree_file: str = TREE_ARG,
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Nodes, fan-out and group sizes per level: how deep and how balanced a tree is."""
    from nhlcli.taxonomy import resolve_tree

    data = resolve_tree(tree_file).stats()
    if as_json:
        print_json(data)
    else:
        console.print(_stats_table(data))


@hierarchy_app.command("list")
@friendly_errors
def list_trees(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """The trees that ship with nhl; pass a name wherever a TREE is asked for."""
    from nhlcli.taxonomy import shipped_tree, shipped_tree_names

    rows = []
    for tree_name in shipped_tree_names():
        tree = shipped_tree(tree_name)
        rows.append(
            {
                "name": tree_name,
                "classes": tree.num_classes,
                "levels": tree.levels,
                "source": tree.source.get("kind"),
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table(title="shipped trees")
    for col in ("name", "classes", "levels", "source"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], str(row["classes"]), str(row["levels"]), str(row["source"]))
    console.print(table)


@hierarchy_app.command("setup-wordnet")
@friendly_errors
def setup_wordnet_cmd(
    source: Path = typer.Option(
        Path("/usr/share/wordnet"),
        "--from",
        help="A WordNet 3.0 dict directory (Debian: apt-get install wordnet-base wordnet-sense-index).",
    ),
    target: str | None = typer.Option(
        None, "--to", help="nltk data directory to install into (default: the first nltk searches)."
    ),
) -> None:
    """Make WordNet 3.0 usable by nltk without a download (adds the missing lexnames file).

    The target is checked (writable, not the source) before anything is copied.
    """
    from nhlcli.taxonomy.wordnet import setup_wordnet

    dest = setup_wordnet(source, target)
    console.print(f"WordNet 3.0 ready for nltk in {shown(dest)}")
