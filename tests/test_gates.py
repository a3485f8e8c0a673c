"""Decision gates (paper 004) and routing: the loss, exactness at the extremes, costs, files, CLI."""

from __future__ import annotations

import json
import math
import shlex

import pytest
import timm
import torch
from conftest import (
    CLASSES,
    QUICK,
    assert_one_line_error,
    flat_tree,
    make_tiny_data,
    nested_tree,
    random_batches,
    run_nhl,
    tiny_model,
    two_level_tree,
)
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from nhlcli.errors import NhlError
from nhlcli.evaluation import evaluate_gated
from nhlcli.experts import cut_model
from nhlcli.gates import (
    GateTraining,
    collect_exits,
    fit_gates,
    hinge_loss,
    simulate,
    tune_thresholds,
)
from nhlcli.gates.fit import train_linear
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.profiling import count_macs


# --------------------------------------------------------------------------- the loss
def test_hinge_loss_matches_paper_004_on_hand_made_inputs():
    # one-vs-all: class 0 is the label (y=+1), classes 1 and 2 are not (y=-1)
    distances = torch.tensor([[2.0, -0.5, 0.3], [0.5, -2.0, -1.0]])
    targets = torch.tensor([0, 0])
    # sample 1: max(0, 1-2) + max(0, 1-0.5) + max(0, 1+0.3) = 0 + 0.5 + 1.3
    # sample 2: max(0, 1-0.5) + max(0, 1-2) + max(0, 1-1) = 0.5 + 0 + 0
    assert hinge_loss(distances, targets).item() == pytest.approx((1.8 + 0.5) / 2)


def test_hinge_subgradient_is_minus_y_x_inside_the_margin_and_zero_outside():
    x = torch.tensor([[1.0, 2.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.25], [-1.0, 0.0]], requires_grad=True)
    d = x @ weight.T  # distances 1.0, 0.5, -1.0
    hinge_loss(d, torch.tensor([0])).backward()
    y = torch.tensor([1.0, -1.0, -1.0])
    # y*d = 1.0 (on the margin: no gradient), -0.5 (inside: -y x), 1.0 (outside: none), eq. (2)
    expected = torch.stack([torch.zeros(2), -y[1] * x[0], torch.zeros(2)])
    assert torch.equal(weight.grad, expected)


def test_a_gate_trained_on_separable_features_separates_them():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[6.0, 0.0, 0.0, 1.0], [0.0, 6.0, 0.0, 1.0], [0.0, 0.0, 6.0, 1.0]])
    labels = torch.arange(3).repeat_interleave(100)
    features = centres[labels] + 0.3 * torch.randn(300, 4, generator=generator)
    weight, bias, accuracy = train_linear(features, labels, 3, GateTraining(epochs=60))
    distances = features @ weight.T + bias
    assert accuracy == 1.0
    own = distances.gather(1, labels[:, None]).squeeze(1)
    assert own.min() > 0  # every sample on its own class's positive side ...
    others = distances.masked_fill(torch.nn.functional.one_hot(labels, 3).bool(), -math.inf).max(1).values
    assert others.max() < 0  # ... and on the negative side of the others


# --------------------------------------------------------------------------- exactness and costs
@pytest.mark.parametrize(
    ("kind", "backbone"),
    [("nhl", "resnet18"), ("flat", "resnet18"), ("nhl", "convnextv2_atto"), ("flat", "convnextv2_atto")],
)
def test_thresholds_at_infinity_equal_the_ungated_model_and_at_minus_infinity_exit_first(kind, backbone):
    model = tiny_model(two_level_tree() if kind == "nhl" else flat_tree(), backbone, kind=kind, seed=0)
    batches = random_batches()
    gated = fit_gates(model, batches, config=QUICK)
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        full = model(x)
        out = gated.run(x, [None] * len(gated.exits))
        assert torch.equal(out.logits, full)
        assert (out.exits == len(gated.exits)).all()
        assert torch.all(out.macs == count_macs(model))
        first = gated.run(x, [-math.inf] * len(gated.exits))
    assert (first.exits == 0).all()
    assert torch.equal(first.logits, gated.exits[0](gated.staged().stages[0](x)))


def independent_exit_macs(gated, backbone: str) -> list[int]:
    """MACs up to each gate counted on a fresh timm model (timm's own stage cut) plus the gate's
    linear layer, and the full model's count plus every gate's."""
    fresh = timm.create_model(backbone, num_classes=0, in_chans=3).eval()
    x = torch.zeros(1, 3, 32, 32)
    out, gates_so_far = [], 0
    for gate, stage in zip(gated.exits, gated.spec.stages, strict=True):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fresh.forward_intermediates(x, indices=[stage], intermediates_only=True, stop_early=True)
        gates_so_far += gate.linear.in_features * gate.linear.out_features
        out.append(counter.get_total_flops() // 2 + gates_so_far)
    out.append(count_macs(gated.model) + gates_so_far)
    return out


@pytest.mark.parametrize(("kind", "backbone"), [("nhl", "resnet18"), ("flat", "convnextv2_atto")])
def test_average_gmacs_is_the_exit_fractions_times_the_cost_up_to_each_gate(kind, backbone):
    model = tiny_model(two_level_tree() if kind == "nhl" else flat_tree(), backbone, kind=kind, seed=0)
    batches = random_batches(n=64)
    gated = fit_gates(model, batches, config=QUICK)
    record = collect_exits(gated, batches, torch.device("cpu"))
    # thresholds that let roughly a quarter leave at each gate
    thresholds = [float(record.scores[:, g].quantile(0.75)) for g in range(len(gated.exits))]
    gated.set_thresholds(thresholds)
    report = evaluate_gated(gated, batches, torch.device("cpu"), baseline=False)
    fractions = [row["fraction"] for row in report["exits"]]
    assert sum(fractions) == pytest.approx(1.0)
    assert 0 < fractions[-1] < 1 and fractions[0] > 0  # exits happened, and not everywhere
    expected = sum(f * m for f, m in zip(fractions, independent_exit_macs(gated, backbone), strict=True))
    assert report["gmacs"] * 1e9 == pytest.approx(expected, rel=1e-9)
    # the simulation used for tuning predicts exactly what real gated inference did
    simulated = simulate(gated, record, thresholds)
    assert simulated["exit_fractions"] == pytest.approx(fractions)
    assert simulated["top1"] == pytest.approx(report["top1"])
    assert simulated["gmacs"] == pytest.approx(report["gmacs"])


def test_tuning_reaches_the_target_at_lower_cost_and_refuses_an_unreachable_one():
    model = tiny_model(two_level_tree(), "resnet18", seed=0)
    batches = random_batches(n=64)
    gated = fit_gates(model, batches, config=QUICK)
    record = collect_exits(gated, batches, torch.device("cpu"))
    target = record.full_accuracy - 0.05
    result = tune_thresholds(gated, record, target)
    assert result["top1"] >= target
    assert result["gmacs"] < result["full_gmacs"]
    with pytest.raises(NhlError, match=f"full network .*reaches {record.full_accuracy:.2%}"):
        tune_thresholds(gated, record, min(1.0, record.full_accuracy + 0.05))


# --------------------------------------------------------------------------- routing
def test_routing_through_every_super_category_equals_the_full_model_and_top_1_keeps_exact_logits():
    tree = nested_tree(3)
    model = tiny_model(tree, "resnet18", seed=0)
    batches = random_batches()
    gated = fit_gates(model, batches, config=QUICK)
    x = torch.cat([b[0] for b in batches])
    supers = len(tree.level(1))
    with torch.no_grad():
        full = model(x)
        gated.set_route_top_k(supers)
        routed = gated.run(x)
        assert torch.equal(routed.logits, full)
        gated.set_route_top_k(1)
        one = gated.run(x)
        trunk_output = x
        for stage in gated.staged().stages:
            trunk_output = stage(trunk_output)
        route = gated.route(trunk_output)
    kept = torch.isfinite(one.logits)
    # each image keeps exactly the classes under its likeliest super-category, with the full logits
    for i, best in enumerate(route.argmax(1).tolist()):
        under = {tree.class_index(c) for c in tree.leaves(tree.level(1)[best])}
        assert set(kept[i].nonzero().squeeze(1).tolist()) == under
    assert torch.equal(one.logits[kept], full[kept])
    assert (one.macs < routed.macs).all()


def test_gates_fit_on_an_expert_answer_over_its_classes_and_route_through_its_subtree():
    model = tiny_model(nested_tree(3), "resnet18", seed=0)
    expert = cut_model(model, ["apple", "banana", "daisy"])
    batches = [(x, y % 3) for x, y in random_batches()]
    gated = fit_gates(expert, batches, config=QUICK)
    assert [g.linear.out_features for g in gated.exits] == [3] * len(gated.exits)
    assert gated.route.linear.out_features == len(expert.tree.level(1)) == 2
    x = torch.cat([b[0] for b in batches])
    gated.set_route_top_k(2)
    with torch.no_grad():
        assert torch.equal(gated.run(x).logits, expert(x))


def test_a_flat_model_has_no_routing_gate():
    gated = fit_gates(
        tiny_model(flat_tree(), "resnet18", kind="flat", seed=0), random_batches(n=16), config=QUICK
    )
    assert gated.route is None
    with pytest.raises(NhlError, match="routing gate"):
        gated.set_route_top_k(1)


# --------------------------------------------------------------------------- files and CLI
@pytest.fixture(scope="module")
def gated_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates")
    data = make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=12, size=32)
    save_model(tiny_model(two_level_tree(), "resnet18", seed=0), root / "nhl.safetensors")
    save_model(tiny_model(flat_tree(), "resnet18", kind="flat", seed=0), root / "flat.safetensors")
    return root, data


@pytest.mark.slow
def test_cli_fit_tune_eval_sweep_predict_on_a_gated_nhl_file(gated_files, tmp_path):
    root, data = gated_files
    gated_file = tmp_path / "gated.safetensors"
    run = run_nhl(
        "gates",
        "fit",
        root / "nhl.safetensors",
        "-o",
        gated_file,
        "--data",
        data,
        "--epochs",
        "5",
        "--workers",
        "0",
        "--json",
    )
    assert run.code == 0, run.err
    fit = json.loads(run.out)
    assert [g["stage"] for g in fit["gates"]] == [0, 1, 2, 3] and fit["route"]["outputs"] == 2
    loaded = open_model(gated_file)
    assert loaded.thresholds == [None] * 4  # closed until tuned

    run = run_nhl("gates", "tune", gated_file, "--data", data, "--max-drop", "10", "--workers", "0", "--json")
    assert run.code == 0, run.err
    tuned = json.loads(run.out)
    assert tuned["top1"] >= tuned["full_top1"] - 0.10 - 1e-9
    assert open_model(gated_file).thresholds == tuned["thresholds"]  # stored in the file

    run = run_nhl("profile", gated_file, "--no-latency", "--json")
    assert run.code == 0, run.err
    profile = json.loads(run.out)
    assert profile["cost"]["gmacs"] == round(
        count_macs(tiny_model(two_level_tree(), "resnet18", seed=0)) / 1e9, 6
    )  # ungated
    assert [e["name"] for e in profile["gates"]["exits"]] == loaded.exit_names()
    assert profile["gates"]["thresholds"] == tuned["thresholds"]

    run = run_nhl("eval", gated_file, "--data", data, "--workers", "0", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["top1"] == pytest.approx(tuned["top1"])  # tuned and evaluated on the same split
    assert report["gmacs"] == pytest.approx(tuned["gmacs"])
    assert [e["fraction"] for e in report["exits"]] == pytest.approx(tuned["exit_fractions"])
    assert report["images_per_s"] > 0 and report["ungated_images_per_s"] > 0
    assert report["ungated_top1"] == pytest.approx(tuned["full_top1"])  # the whole model on the same images

    run = run_nhl("eval", gated_file, "--data", data, "--workers", "0", "--route-top-k", "1", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["route_top_k"] == 1

    plot = tmp_path / "curve.png"
    run = run_nhl("gates", "sweep", gated_file, "--data", data, "--workers", "0", "--plot", plot, "--json")
    assert run.code == 0, run.err
    points = json.loads(run.out)["points"]
    assert [p["max_drop"] for p in points][:2] == [0.0, 0.1]
    assert all(
        a["gmacs"] >= b["gmacs"] for a, b in zip(points, points[1:], strict=False)
    )  # more drop, less cost
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > 300

    image = next((data / "val" / "apple").iterdir())
    run = run_nhl("predict", gated_file, image, "--json")
    assert run.code == 0, run.err
    prediction = json.loads(run.out)["predictions"][0]
    assert prediction["exit"] in open_model(gated_file).exit_names() and prediction["gmacs"] > 0

    run = run_nhl("gates", "tune", gated_file, "--data", data, "--workers", "0")
    assert_one_line_error(run, "--target-accuracy", "--max-drop")


@pytest.mark.slow
def test_cli_bad_gate_inputs_get_one_line_errors(gated_files, tmp_path):
    root, data = gated_files
    gated_file = tmp_path / "flat-gated.safetensors"
    run = run_nhl(
        "gates",
        "fit",
        root / "flat.safetensors",
        "-o",
        gated_file,
        "--data",
        data,
        "--epochs",
        "2",
        "--workers",
        "0",
        "--loss",
        "ce",
    )
    assert run.code == 0, run.err
    assert open_model(gated_file).spec.loss == "ce"
    run = run_nhl("gates", "tune", gated_file, "--data", data, "--thresholds", "1,2", "--workers", "0")
    assert_one_line_error(run, "2 thresholds given", "4 gates")
    run = run_nhl("gates", "tune", gated_file, "--data", data, "--target-accuracy", "100", "--workers", "0")
    assert_one_line_error(run, "cannot be reached", "full network")
    run = run_nhl("eval", gated_file, "--data", data, "--route-top-k", "1", "--workers", "0")
    assert_one_line_error(run, "routing gate")
    run = run_nhl("eval", root / "nhl.safetensors", "--data", data, "--route-top-k", "1", "--workers", "0")
    assert_one_line_error(run, "gates fit")
    run = run_nhl(
        "gates",
        "fit",
        root / "nhl.safetensors",
        "-o",
        tmp_path / "x.safetensors",
        "--stages",
        "9",
        "--data",
        data,
    )
    assert_one_line_error(run, "stage 9 is out of range")
    assert not (tmp_path / "x.safetensors").exists()
    nhl_gated = tmp_path / "nhl-gated.safetensors"
    assert (
        run_nhl(
            "gates",
            "fit",
            root / "nhl.safetensors",
            "-o",
            nhl_gated,
            "--data",
            data,
            "--epochs",
            "1",
            "--workers",
            "0",
        ).code
        == 0
    )
    run = run_nhl("cutout", nhl_gated, "--classes", "apple", "-o", tmp_path / "e.safetensors")
    assert_one_line_error(run, "gated", "gates fit")


@pytest.mark.slow
def test_the_fit_hint_tunes_on_one_half_and_reports_on_the_other(gated_files, tmp_path):
    root, data = gated_files
    gated_file = tmp_path / "hint gated.safetensors"
    run = run_nhl(
        "gates", "fit", root / "flat.safetensors", "-o", gated_file, "--data", data, "--epochs", "1",
        "--workers", "0",
    )  # fmt: skip
    assert run.code == 0, run.err
    tune = shlex.split(next(line for line in run.out.splitlines() if line.startswith("nhl gates tune ")))
    report = shlex.split(next(line for line in run.out.splitlines() if line.startswith("nhl eval ")))
    assert tune[3] == report[2] == str(gated_file)  # quoted, so the lines paste as they are
    assert tune[tune.index("--part") + 1] == "1/2" and report[report.index("--part") + 1] == "2/2"
    assert tune[tune.index("--data") + 1] == report[report.index("--data") + 1] == str(data)


def test_fashion_mnist_held_out_split_is_called_test():
    from nhlcli.data import split_name

    assert split_name("fashion-mnist", "val") == "test"  # Fashion-MNIST has no validation set
    assert split_name("fashion-mnist", "train") == "train"
    assert split_name("path/to/imagefolder", "val") == "val"
