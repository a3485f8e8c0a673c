"""Experts that can answer "none of mine" (issue 38): the other head never changes the expert's
answers on its own classes, survives the file round trip, refuses what it cannot be, and its
threshold keeps the share of own images sent to "other" within budget on new images."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import CLASSES, assert_one_line_error, make_tiny_data, run_nhl, tiny_model, two_level_tree

from nhlcli.experts import cut_model
from nhlcli.experts.other import threshold_for
from nhlcli.model.files import save_model
from nhlcli.model.loading import open_model
from nhlcli.risk import batch_images_needed, images_needed, order_statistic_batch_p_value

FRUIT = ["apple", "banana", "cherry", "fig"]  # the tiny tree's "fruit" node


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny NHL, its tiny image folder, and the fruit expert cut with an other head."""
    root = tmp_path_factory.mktemp("other")
    torch.manual_seed(0)
    save_model(tiny_model(two_level_tree()), root / "m.safetensors")
    make_tiny_data.make_image_folder(root / "data", CLASSES, per_class=12, size=32)
    run = run_nhl("cutout", root / "m.safetensors", "--classes", "fruit", "-o", root / "fruit.safetensors",
                  "--other", "--data", root / "data", "--other-budget", "0.5", "--workers", "0",
                  "--no-latency", "--json")  # fmt: skip
    assert run.code == 0, run.err
    return root, json.loads(run.out)


def test_with_or_without_the_head_the_experts_logits_are_the_full_models(files):
    root, _ = files
    full = open_model(root / "m.safetensors")
    expert = open_model(root / "fruit.safetensors")
    assert expert.has_other and expert.other.spec.threshold is not None
    images = torch.randn(8, 3, 32, 32)
    index = torch.tensor([full.tree.class_index(c) for c in expert.tree.classes])
    with torch.no_grad():
        expected = full(images).index_select(1, index)
        plain = cut_model(full, FRUIT)(images)
        answered = expert.infer(images)
    with torch.no_grad():
        own = expert(images)
    # the head changes nothing: bit for bit the plain expert's, which is the parent's restricted
    # logits up to the summation order of batched branch ops over fewer nodes
    assert torch.equal(own, plain) and torch.equal(answered.logits, own)
    assert torch.allclose(plain, expected, atol=1e-5)
    assert answered.other is not None and answered.other.dtype == torch.bool and len(answered.other) == 8


def test_the_head_and_its_threshold_survive_saving_and_opening(files, tmp_path):
    root, _ = files
    expert = open_model(root / "fruit.safetensors")
    save_model(expert, tmp_path / "again.safetensors")
    again = open_model(tmp_path / "again.safetensors")
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        before, after = expert.other_scores(images), again.other_scores(images)
    assert torch.equal(before[1], after[1]) and again.other.spec == expert.other.spec


def test_the_cutout_report_says_what_the_threshold_promises_and_costs(files):
    _, summary = files
    calibration = summary["other"]["calibration"]
    assert calibration["budget"] == 0.5 and calibration["delta"] == 0.1
    assert calibration["guaranteed"] and calibration["images_mine"] >= images_needed(0.5, 0.1)
    assert set(calibration["auroc"]) == {"other head", "max softmax", "max logit", "energy"}
    assert 0 <= summary["other"]["extra_macs_percent"] < 10


def test_nhl_cutout_other_test_images_promises_the_share_on_a_test_set(files, tmp_path):
    root, _ = files
    run = run_nhl("cutout", root / "m.safetensors", "--classes", "fruit", "-o", tmp_path / "f.safetensors",
                  "--other", "--data", root / "data", "--other-budget", "0.5", "--test-images", "20",
                  "--workers", "0", "--no-latency")  # fmt: skip
    assert run.code == 0, run.err
    calibration = open_model(tmp_path / "f.safetensors").other.spec.calibration
    assert calibration["test_images"] == 20 and "beta-binomial" in calibration["method"]
    assert calibration["images_needed"] == batch_images_needed(0.5, 0.1, 20)
    assert calibration["guaranteed"] and calibration["images_mine"] >= calibration["images_needed"]
    assert "on a test set of 20 new own images" in " ".join(run.out.split())
    below, images = calibration["rejected"], calibration["images_mine"]
    assert order_statistic_batch_p_value(below, images, 0.5, 20) <= 0.1


def test_nhl_eval_reports_own_class_accuracy_and_what_goes_to_other(files):
    root, _ = files
    run = run_nhl("eval", root / "fruit.safetensors", "--data", root / "data", "--workers", "0", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    other = report["other"]
    assert other["images_mine"] == report["images"]  # the own-class figures above are on the same images
    assert other["images_other"] > 0 and 0 <= other["rejected_other"] <= 1
    assert other["top1_mine_with_other"] <= report["top1"] + 1e-9  # an own image sent to other is wrong


def test_nhl_predict_writes_the_other_column(files, tmp_path):
    root, _ = files
    run = run_nhl("predict", root / "fruit.safetensors", root / "data" / "val", "-o", tmp_path / "p.csv")
    assert run.code == 0, run.err
    with (tmp_path / "p.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows and all(row["other"] in ("True", "False") for row in rows)
    expert = open_model(root / "fruit.safetensors")
    assert len(rows) == len(list((root / "data" / "val").rglob("*.*")))
    assert expert.other.spec.threshold is not None


def test_an_expert_with_an_other_head_is_neither_cut_again_nor_gated(files, tmp_path):
    root, _ = files
    again = tmp_path / "a.safetensors"
    run = run_nhl("cutout", root / "fruit.safetensors", "--classes", "apple", "-o", again)
    assert_one_line_error(run, "other head", "cut from the model it was cut from")
    run = run_nhl("gates", "fit", root / "fruit.safetensors", "-o", tmp_path / "g.safetensors",
                  "--data", root / "data")  # fmt: skip
    assert_one_line_error(run, "other head")


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (("--data", "data"), ["--data goes with --other"]),
        (("--other",), ["--other needs --data"]),
        (("--other", "--data", "data", "--other-budget", "1.5"), ["--other-budget 1.5", "between 0 and 1"]),
        (("--other", "--data", "data", "--delta", "0"), ["--delta 0", "between 0 and 1"]),
        (("--test-images", "100"), ["--test-images goes with --other"]),
        (("--other", "--data", "data", "--test-images", "0"), ["--test-images 0", "at least 1"]),
    ],
)
def test_other_options_that_make_no_sense_are_refused(files, tmp_path, extra, fragments):
    root, _ = files
    run = run_nhl("cutout", root / "m.safetensors", "--classes", "fruit", "-o", tmp_path / "e.safetensors",
                  *extra, cwd=root)  # fmt: skip
    assert_one_line_error(run, *fragments)
    assert not (tmp_path / "e.safetensors").exists()


def test_the_threshold_keeps_own_images_within_budget_on_new_draws():
    """Own-image scores are standard normal: at threshold t the true share sent to "other" is
    Phi(t). Over many calibration draws it exceeds the budget in at most about delta of them."""
    budget, delta, draws = 0.05, 0.2, 200
    normal = torch.distributions.Normal(0.0, 1.0)
    generator = torch.Generator().manual_seed(0)
    draws_of = [torch.randn(400, generator=generator) for _ in range(draws)]
    thresholds = [threshold_for(scores, budget, delta)[0] for scores in draws_of]
    over = sum(float(normal.cdf(torch.tensor(t))) > budget for t in thresholds)
    assert over <= draws * delta + 3 * (draws * delta * (1 - delta)) ** 0.5, over
    few, record = threshold_for(torch.randn(20, generator=generator), budget, delta)
    assert few is None and not record["guaranteed"]
    assert record["images_needed"] == images_needed(budget, delta)


def test_on_a_test_set_of_a_given_size_the_share_sent_to_other_stays_within_budget():
    """The share a user measures on one test set of 100 own images strays from the rate. A
    threshold guaranteed for the rate reads above the budget there far more often than delta; one
    guaranteed for a test set of 100 (``test_images``) does so in at most about delta of draws."""
    budget, delta, draws, test = 0.05, 0.1, 200, 100
    generator = torch.Generator().manual_seed(3)
    over = {"rate": 0, "test set": 0}
    for _ in range(draws):
        calibration = torch.randn(2000, generator=generator)
        measured = torch.randn(test, generator=generator)
        for name, images in (("rate", None), ("test set", test)):
            threshold, record = threshold_for(calibration, budget, delta, images)
            assert record["guaranteed"] and record["test_images"] == images
            over[name] += int((measured < threshold).sum()) > budget * test
    limit = draws * delta + 3 * (draws * delta * (1 - delta)) ** 0.5
    assert over["test set"] <= limit, over
    assert over["rate"] > over["test set"] + 20, over  # the rate's guarantee does not cover this


def test_the_test_set_tail_is_the_beta_binomial_of_an_order_statistic():
    # one calibration score, one new one: below it half the time
    assert order_statistic_batch_p_value(0, 1, 0.0, 1) == pytest.approx(0.5)
    # below the lowest of 9: 1 chance in 10
    assert order_statistic_batch_p_value(0, 9, 0.0, 1) == pytest.approx(0.1)
    # against simulation: 2 of 30 calibration scores below the threshold, 20 new, more than 3 below
    generator = torch.Generator().manual_seed(0)
    calibration = torch.rand(20000, 30, generator=generator).sort(dim=1).values[:, 2]
    below = (torch.rand(20000, 20, generator=generator) < calibration[:, None]).sum(1)
    assert float((below > 3).double().mean()) == pytest.approx(order_statistic_batch_p_value(2, 30, 0.15, 20),
                                                               abs=0.01)  # fmt: skip
    needed = batch_images_needed(0.05, 0.1, 10)  # no new image may fall below: 1/(n+1) <= 0.1 ... of 10
    assert order_statistic_batch_p_value(0, needed, 0.05, 10) <= 0.1
    assert order_statistic_batch_p_value(0, needed - 1, 0.05, 10) > 0.1


def test_eval_on_data_with_only_the_experts_classes_skips_the_other_figures_and_says_why(files, tmp_path):
    root, _ = files
    make_tiny_data.make_image_folder(tmp_path / "fruit", FRUIT, per_class=3, size=32)
    run = run_nhl("eval", root / "fruit.safetensors", "--data", tmp_path / "fruit", "--workers", "0",
                  "--json")  # fmt: skip
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["images"] > 0 and "skipped" in report["other"]


@pytest.mark.slow
def test_an_exported_expert_gives_its_other_score_and_threshold_to_the_runtime(files, tmp_path):
    import onnxruntime

    root, _ = files
    run = run_nhl("export", root / "fruit.safetensors", "-o", tmp_path / "fruit.onnx")
    assert run.code == 0, run.err
    session = onnxruntime.InferenceSession(str(tmp_path / "fruit.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "mine_score"]
    meta = session.get_modelmeta().custom_metadata_map
    expert = open_model(root / "fruit.safetensors")
    assert float(meta["other_threshold"]) == pytest.approx(expert.other.spec.threshold)
    images = torch.randn(3, 3, 32, 32)
    logits, score = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = expert.other_scores(images)
    assert torch.allclose(torch.from_numpy(score), expected[1], atol=1e-4)
