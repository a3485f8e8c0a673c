"""benchmarks/matched_controls.py: the pruned flat network an expert is compared with must cost
no more than the expert, and its subset classifier must be the full one's rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from conftest import flat_tree

from nhlcli.model.nhl import with_input_size
from nhlcli.model.registry import create_model
from nhlcli.model.trunk import TrunkConfig
from nhlcli.profiling import count_macs

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("matched_controls", REPO / "benchmarks" / "matched_controls.py")
matched_controls = importlib.util.module_from_spec(spec)
sys.modules["matched_controls"] = matched_controls
spec.loader.exec_module(matched_controls)


def flat_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(flat_tree(), "flat", TrunkConfig("resnet18"))
    model.input_config = with_input_size(model.input_config, 32)
    return model.eval()


def test_pruning_stops_at_the_first_step_within_the_target_and_still_runs():
    model = flat_model()
    full = count_macs(model)
    target = int(0.8 * full)
    found = matched_controls.prune_to_macs(model, target)
    assert found["macs_before"] == full
    assert found["macs"] == count_macs(model) <= target  # what the cost report would count
    assert found["macs"] > 0.7 * full  # stopped near the target, not pruned to the bone
    assert found["params"] == sum(p.numel() for p in model.parameters()) < 11e6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, len(flat_tree().classes))


def test_a_subset_classifier_keeps_the_full_models_rows():
    model = flat_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        chosen = ["elm", "banana"]
        matched_controls.keep_classes(model, chosen)
        kept = model(x)
    assert model.tree.classes == ["banana", "elm"]  # tree order, not the order asked
    order = [flat_tree().class_index(c) for c in model.tree.classes]
    assert torch.allclose(kept, full[:, order], atol=1e-5)
