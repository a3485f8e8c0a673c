"""Experts: exact cutouts, their size, their files, the cost report and the CLI (CPU, no network)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import assert_one_line_error, make_tiny_data, run_nhl, tiny_model
from PIL import Image
from safetensors.torch import load_file, save_file

from nhlcli.errors import NhlError
from nhlcli.experts import compare, cost_report, count_macs, cut_model, cutout_file, save_expert
from nhlcli.experts.curve import cost_curve, default_points
from nhlcli.model.files import read_metadata, save_model
from nhlcli.model.loading import open_model
from nhlcli.model.nhl import NHLModel, with_input_size
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.profiling import peak_memory
from nhlcli.taxonomy import Tree


def random_tree(levels: int, num_classes: int, seed: int) -> Tree:
    """A random tree: classes split into random groups level by level, class order shuffled."""
    rng = random.Random(seed)
    classes = [f"c{i:02d}" for i in range(num_classes)]

    def split(members: list[str], depth: int, prefix: str) -> list[dict]:
        if depth == levels:
            return [{"id": c, "name": f"class {c}"} for c in members]
        groups: list[list[str]] = []
        pool = members[:]
        rng.shuffle(pool)
        while pool:  # groups of 1-4 members (single-child chains happen, as in real trees)
            take = rng.randint(1, 4)
            groups.append(pool[:take])
            pool = pool[take:]
        nodes = []
        for i, g in enumerate(groups):
            node_id = f"{prefix}{i}"
            children = split(g, depth + 1, node_id + ".")
            nodes.append({"id": node_id, "name": f"group {node_id}", "children": children})
        return nodes

    nested = {"id": "root", "name": "all", "children": split(classes, 1, "n")}
    order = classes[:]
    rng.shuffle(order)
    return Tree.from_nested(nested, order, name=f"random-l{levels}")


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights and BatchNorm statistics everywhere (fresh init zeroes the last BN of
    each branch block, which would hide a wrong cut)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")) or "bn" in name:
                offset = 1.0 if "weight" in name else 0.0
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2 + offset)
    return model.eval()


def kept_logits(parent: NHLModel, expert: NHLModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        full, cut = parent(x), expert(x)
    index = [parent.tree.class_index(c) for c in expert.tree.classes]
    return full[:, index], cut


LEAN = {"variant": "nhl-lean"}  # at 32 px the trunk's 2x2 map is below the pooling threshold
LEAN_POOLED = {"variant": "nhl-lean", "pool_min_side": 1}
LEAN_GROUPED = {"variant": "nhl-lean", "group_size": 4, "pool_min_side": 1}


@pytest.mark.parametrize("backbone", ["resnet18", "convnextv2_atto"])
@pytest.mark.parametrize(
    ("levels", "shape"),
    [(1, {}), (2, {}), (3, {}), (4, {}), (2, LEAN), (4, LEAN_POOLED), (3, LEAN_GROUPED)],
    ids=["paper-1", "paper-2", "paper-3", "paper-4", "lean-2", "lean-pooled-4", "lean-pooled-g4-3"],
)
def test_expert_logits_equal_parent_logits_on_kept_classes(backbone, levels, shape):
    tree = random_tree(levels, 14, seed=levels)
    assert tree.levels == levels
    parent = randomise(tiny_model(tree, backbone, **shape))
    x = torch.randn(3, 3, 32, 32)
    rng = random.Random(levels)
    for k in (1, 2, 5, 13):
        labels = rng.sample(tree.classes, k)
        expert = cut_model(parent, labels)
        assert sorted(expert.tree.classes) == sorted(labels)
        # kept classes keep the parent's relative order
        assert expert.tree.classes == [c for c in tree.classes if c in labels]
        full, cut = kept_logits(parent, expert, x)
        assert (full - cut).abs().max().item() <= 1e-5
        # the expert's softmax is over its own classes (paper 003, eq. 3)
        assert torch.allclose(cut.softmax(1), full.softmax(1), atol=1e-6)


def test_inner_node_keeps_every_class_below_it():
    tree = random_tree(3, 14, seed=7)
    group = tree.level(1)[0]
    expert = cut_model(randomise(tiny_model(tree)), [tree.node(group).name])
    assert set(expert.tree.classes) == set(tree.leaves(group))


def _independent_param_count(parent: NHLModel, kept: list[str]) -> int:
    """Trunk + each kept node's share of its level + one head per kept class, from the parent."""
    tree = parent.tree
    total = sum(p.numel() for p in parent.trunk.parameters())
    for depth, level in enumerate(parent.levels, start=1):
        per_node = sum(p.numel() for p in level.parameters()) // level.num_nodes
        nodes_on_paths = {tree.path(c)[depth] for c in kept}
        total += per_node * len(nodes_on_paths)
    total += len(kept) * (parent.heads.in_channels + 1)  # one weight row and one bias per leaf
    return total


@pytest.mark.parametrize("levels", [1, 3])
def test_expert_params_are_trunk_plus_kept_paths(levels):
    tree = random_tree(levels, 12, seed=3)
    parent = randomise(tiny_model(tree))
    kept = tree.classes[2:7]
    expert = cut_model(parent, kept)
    counted = sum(p.numel() for p in expert.parameters())
    assert counted == _independent_param_count(parent, kept)
    groups = expert.parameter_groups()
    assert groups["total"] == counted
    assert groups["trunk"] == sum(p.numel() for p in parent.trunk.parameters())


def test_expert_file_loads_without_parent_and_recut_equals_direct_cut(tmp_path):
    tree = random_tree(3, 12, seed=5)
    parent = randomise(tiny_model(tree))
    parent_file = save_model(parent, tmp_path / "parent.safetensors")
    first = cutout_file(parent_file, tree.classes[:8])
    save_expert(first, tmp_path / "first.safetensors")
    lineage = read_metadata(tmp_path / "first.safetensors")["expert"]
    assert lineage["parent_classes"] == 12 and lineage["classes"] == tree.classes[:8]
    assert len(lineage["parent_sha256"]) == 64 and lineage["root_sha256"] == lineage["parent_sha256"]

    kept = tree.classes[1:4]
    direct = cutout_file(parent_file, kept)
    recut = cutout_file(tmp_path / "first.safetensors", kept)
    assert recut.lineage["root_sha256"] == lineage["parent_sha256"]  # the chain remembers its origin
    save_expert(recut, tmp_path / "recut.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = parent(x)[:, [tree.class_index(c) for c in kept]]
    parent_file.unlink()  # the expert needs nothing from its parent
    loaded = open_model(tmp_path / "recut.safetensors")
    direct_state, recut_state = direct.model.state_dict(), loaded.state_dict()
    assert direct_state.keys() == recut_state.keys()
    assert all(torch.equal(direct_state[k], recut_state[k]) for k in direct_state)
    with torch.no_grad():
        assert (loaded(x) - expected).abs().max().item() <= 1e-5


def test_file_cut_reads_only_kept_rows_and_matches_memory_cut(tmp_path):
    tree = random_tree(2, 12, seed=11)
    parent = randomise(tiny_model(tree))
    path = save_model(parent, tmp_path / "p.safetensors")
    kept = [tree.classes[i] for i in (0, 5, 9)]
    from_file, in_memory = cutout_file(path, kept).model.state_dict(), cut_model(parent, kept).state_dict()
    assert from_file.keys() == in_memory.keys()
    assert all(torch.equal(from_file[k], in_memory[k]) for k in from_file)


def test_phl_1branch_expert_keeps_the_shared_branch():
    tree = random_tree(1, 8, seed=2)
    parent = randomise(create_model(tree, "phl-1branch", TrunkConfig("resnet18")))
    parent.input_config = with_input_size(parent.input_config, 32)
    expert = cut_model(parent, tree.classes[:3])
    full, cut = kept_logits(parent, expert, torch.randn(2, 3, 32, 32))
    assert (full - cut).abs().max().item() <= 1e-5
    assert expert.levels[0].num_nodes == 1


def test_selection_errors():
    tree = random_tree(2, 10, seed=1)
    parent = randomise(tiny_model(tree))
    with pytest.raises(NhlError, match="empty"):
        cut_model(parent, [])
    with pytest.raises(NhlError, match="closest"):
        cut_model(parent, ["class c0x"])
    with pytest.raises(NhlError, match="twice"):
        cut_model(parent, ["c01", "c01"])
    # overlapping names union: a group and a class below it keep the group's classes once
    group = tree.parent("c03")
    assert cut_model(parent, ["c03", group]).tree.classes == tree.subtree([group]).classes
    # a class index selects that class
    assert cut_model(parent, ["0"]).tree.classes == [tree.classes[0]]


def test_macs_and_cost_report_shrink_with_the_expert():
    tree = random_tree(3, 12, seed=4)
    parent = randomise(tiny_model(tree))
    expert = cut_model(parent, tree.classes[:2])
    full_macs, expert_macs = count_macs(parent), count_macs(expert)
    trunk_macs = count_macs(parent.trunk.eval(), (3, 32, 32))
    assert trunk_macs < expert_macs < full_macs
    report_p = cost_report(parent, (1, 4), repeats=3)
    report_e = cost_report(expert, (1, 4), repeats=3)
    assert report_p["gmacs"] == pytest.approx(full_macs / 1e9, abs=1e-6)
    assert [r["batch"] for r in report_e["latency"]] == [1, 4]
    assert all(r["median_ms"] > 0 and r["runs"] >= 3 for r in report_e["latency"])
    reduction = compare(report_p, report_e)
    assert reduction["params"]["trunk"] == 0.0
    assert reduction["params"]["branches"] > 50
    assert reduction["gmacs"] == pytest.approx(100 * (1 - report_e["gmacs"] / report_p["gmacs"]), abs=0.01)


def test_peak_memory_counts_weights_and_grows_with_batch():
    model = randomise(tiny_model(random_tree(2, 6, seed=0)))
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    small, large = peak_memory(model, 1), peak_memory(model, 16)
    assert weights < small < large
    # the input alone of the larger batch is alive during the pass
    assert large - weights >= 16 * 3 * 32 * 32 * 4


def test_cost_curve_points_and_monotone_params():
    assert default_points(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert default_points(3) == [1, 2, 3]
    tree = random_tree(2, 12, seed=9)
    rows = cost_curve(randomise(tiny_model(tree)))
    related = [r for r in rows if r["selection"] == "related"]
    assert [r["classes"] for r in related] == [1, 2, 5, 10, 12]
    params = [r["params"] for r in related]
    assert params == sorted(params) and params[0] < params[-1]
    # related classes share ancestors: never more parameters than random ones of the same count
    random_rows = {r["classes"]: r for r in rows if r["selection"] == "random"}
    assert all(r["params"] <= random_rows[r["classes"]]["params"] for r in related)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    tree = random_tree(2, 6, seed=8)
    save_model(randomise(tiny_model(tree)), root / "nhl.safetensors")
    flat = create_model(tree, "flat", TrunkConfig("resnet18"))
    flat.input_config = with_input_size(flat.input_config, 32)
    save_model(flat, root / "flat.safetensors")
    save_file({"w": torch.zeros(2)}, str(root / "plain.safetensors"))
    return root, tree


@pytest.mark.slow
def test_cli_cutout_writes_expert_and_report(model_files, tmp_path):
    root, tree = model_files
    kept = tree.classes[:2]
    out, report = tmp_path / "expert.safetensors", tmp_path / "report.json"
    run = run_nhl("cutout", root / "nhl.safetensors", "--classes", ",".join(kept), "-o", out,
                  "--report", report, "--batch-size", "4", "--json")  # fmt: skip
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert json.loads(report.read_text()) == summary
    assert summary["kept_classes"] == [tree.node(c).name for c in kept]
    assert summary["expert_cost"]["classes"] == 2
    assert summary["parent_cost"]["threads"] >= 1
    assert [r["batch"] for r in summary["expert_cost"]["latency"]] == [1, 4]
    assert summary["reduction_percent"]["params"]["branches"] > 0
    expert = open_model(out)
    assert expert.tree.classes == kept
    assert expert.metadata["cost"]["gmacs"] == summary["expert_cost"]["gmacs"]
    # profile an expert: its cost now and the comparison recorded at cut time
    run = run_nhl("profile", out, "--no-latency", "--json")
    assert run.code == 0, run.err
    profile = json.loads(run.out)
    assert profile["expert"]["parent_classes"] == 6
    assert profile["expert"]["reduction_percent"] == summary["reduction_percent"]
    assert profile["cost"]["params"] == summary["expert_cost"]["params"]


@pytest.mark.slow
def test_cli_profile_flat_and_curve(model_files, tmp_path):
    root, _ = model_files
    run = run_nhl("profile", root / "flat.safetensors", "--batch-size", "2", "--repeats", "2", "--json")
    assert run.code == 0, run.err
    profile = json.loads(run.out)
    assert profile["kind"] == "flat" and "expert" not in profile
    assert profile["cost"]["params"]["total"] > 1e6
    png = tmp_path / "curve.png"
    run = run_nhl("profile", root / "nhl.safetensors", "--no-latency", "--curve", png, "--json")
    assert run.code == 0, run.err
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 300
    curve = json.loads(run.out)["curve"]
    # the file's widths (8, 8) are no preset's: all drawn beside it; at full size linear leaves
    # cost least, leaf bottlenecks of one common output less than the paper's
    assert set(curve["variants"]) == {"nhl", "nhl-lean", "nhl-scale"}
    full = {name: rows[-1]["gmacs"] for name, rows in curve["variants"].items()}
    assert full["nhl-scale"] < full["nhl-lean"] < full["nhl"]
    # the base line is the plain network on the same classes and input: the flat file's own cost
    assert curve["base_gmacs"] == pytest.approx(profile["cost"]["gmacs"], rel=1e-3)
    run = run_nhl("profile", root / "flat.safetensors", "--no-latency", "--curve", tmp_path / "x.png")
    assert_one_line_error(run, "NHL model")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_cli_eval_on_expert_restricts_data(tmp_path):
    names = ["apple", "banana", "cherry", "daisy"]
    data = make_tiny_data.make_image_folder(tmp_path / "data", names, per_class=4, size=32)
    tree = Tree.from_nested(
        {"id": "root", "name": "all", "children": [
            {"id": "fruit", "name": "fruit", "children": [{"id": n, "name": n} for n in names[:3]]},
            {"id": "flower", "name": "flower", "children": [{"id": "daisy", "name": "daisy"}]},
        ]},
        names,
    )  # fmt: skip
    parent = save_model(randomise(tiny_model(tree)), tmp_path / "p.safetensors")
    out = tmp_path / "fruit.safetensors"
    assert run_nhl("cutout", parent, "--classes", "apple,banana", "-o", out, "--no-latency").code == 0
    run = run_nhl("eval", out, "--data", data, "--split", "train", "--workers", "0", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["num_classes"] == 2 and set(report["per_class"]) == {"apple", "banana"}
    via_parent = run_nhl("eval", parent, "--data", data, "--split", "train", "--workers", "0",
                         "--classes", "apple,banana", "--json")  # fmt: skip
    assert via_parent.code == 0, via_parent.err
    assert json.loads(via_parent.out)["top1"] == report["top1"]
    assert report["images"] == json.loads(via_parent.out)["images"]


@pytest.mark.slow
def test_cli_cutout_bad_inputs(model_files, tmp_path):
    root, _ = model_files
    out = tmp_path / "e.safetensors"
    nhl = root / "nhl.safetensors"
    assert_one_line_error(run_nhl("cutout", nhl, "--classes", "class c0l", "-o", out), "unknown", "closest")
    assert_one_line_error(run_nhl("cutout", nhl, "--classes", " , ", "-o", out), "names no class")
    assert_one_line_error(run_nhl("cutout", nhl, "--classes", "c01,c01", "-o", out), "twice")
    run = run_nhl("cutout", root / "flat.safetensors", "--classes", "c01", "-o", out)
    assert_one_line_error(run, "flat model", "nhl train")
    assert_one_line_error(run_nhl("cutout", root / "plain.safetensors", "--classes", "c01", "-o", out), "nhl")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(nhl.read_bytes()[:5000])
    assert_one_line_error(run_nhl("cutout", truncated, "--classes", "c01", "-o", out), "truncated")
    assert_one_line_error(run_nhl("cutout", nhl, "--classes", "@missing.txt", "-o", out), "does not exist")
    assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))
    # the file format keeps the parent's weights untouched
    assert load_file(str(nhl)).keys() == NHLModel.from_config(read_metadata(nhl)).state_dict().keys()


def test_nhl_cutout_costs_the_parent_without_reading_its_weights_whole(tmp_path, monkeypatch):
    """The cut reads only the kept rows; the parent's cost comes from a skeleton of its shape."""
    from nhlcli.experts import cutout_with_cost
    from nhlcli.model import files, loading

    tree = random_tree(2, 12, seed=3)
    parent_model = randomise(tiny_model(tree))
    parent = save_model(parent_model, tmp_path / "p.safetensors")

    def whole_read(*args, **kwargs):
        raise AssertionError("the parent's weights were read whole")

    monkeypatch.setattr(files, "read_model_file", whole_read)
    monkeypatch.setattr(loading, "open_model", whole_read)
    cut, parent_cost, expert_cost = cutout_with_cost(parent, [tree.classes[0]], (1,), latency=False)
    assert parent_cost["params"] == parent_model.parameter_groups()
    assert parent_cost["gmacs"] > expert_cost["gmacs"] > 0
    x = torch.randn(2, 3, 32, 32)
    full, kept = kept_logits(parent_model, cut.model, x)
    assert torch.allclose(full, kept, atol=1e-5)
