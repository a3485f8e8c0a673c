"""The model contract (nhlcli/model/contract.py), run over every registered kind x variant and the
gated wrapper: build, forward, the one inference entry, save/open round trip, cut exact where the
kind can be cut (refused in one line where not), profile and ONNX export. A kind added to the
registry is tested here without a line of this file changing."""

from __future__ import annotations

import pytest
import torch
from conftest import flat_tree, two_level_tree

from nhlcli.errors import NhlError
from nhlcli.experts import cut_model
from nhlcli.experts.profile import profile_model_file
from nhlcli.model.contract import Inference, NhlModel
from nhlcli.model.files import save_model
from nhlcli.model.gated import GatedModel, GateSpec
from nhlcli.model.loading import open_model
from nhlcli.model.nhl import BranchConfig, with_input_size
from nhlcli.model.registry import MODEL_KINDS, VARIANTS, create_model, variant_class
from nhlcli.model.trunk import TrunkConfig
from nhlcli.profiling import count_macs

GATED = "gated"  # the gated wrapper on the default NHL variant, one exit gate after stage 0
CASES = [*VARIANTS, GATED]


def build(case: str, seed: int = 0) -> NhlModel:
    """A small model of ``case`` (a variant name, or the gated wrapper) at 32 px with random weights."""
    torch.manual_seed(seed)
    variant = "nhl" if case == GATED else case
    preset = VARIANTS[variant].preset
    tree = flat_tree() if preset.get("levels") == 1 else two_level_tree()
    branches = None
    if variant_class(variant).branch_shaped:
        levels = tree.levels - int(preset.get("linear_leaves", False))
        widths = (16,) * levels if preset.get("common_output") else (8,) * levels
        branches = BranchConfig(widths=widths)
    model = create_model(tree, variant, TrunkConfig("resnet18", None, 3), branches)
    model.input_config = with_input_size(model.input_config, 32)
    for p in model.parameters():  # weights far from zero, so that a wrong slice shows
        p.data.normal_(0, 0.2)
    if case == GATED:
        model = GatedModel(model.eval(), GateSpec(stages=[0], thresholds=[1e9]))
    return model.eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_every_kind_in_the_registry_implements_the_contract():
    for name, model_class in MODEL_KINDS.items():
        assert issubclass(model_class, NhlModel), name
        assert model_class.kind == name
        assert not getattr(model_class, "__abstractmethods__", ()), (name, model_class.__abstractmethods__)
    for name, spec in VARIANTS.items():
        assert spec.kind in MODEL_KINDS, name


def test_a_kind_missing_part_of_the_contract_cannot_be_built():
    class Incomplete(NhlModel):
        kind = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


@pytest.mark.parametrize("case", CASES)
def test_forward_and_the_one_inference_entry_agree(case):
    model = build(case)
    x = images()
    logits = model(x)
    assert logits.shape == (3, len(model.classes))
    out = model.infer(x)
    assert isinstance(out, Inference)
    assert torch.allclose(out.logits, logits, atol=1e-6)
    assert out.exits.tolist() == [len(model.exit_names()) - 1 if model.exit_names() else 0] * 3
    base = count_macs(model.base_network)
    if model.exit_names():  # nobody left early: the whole network, plus the gates they passed
        assert all(base < m < base * 1.01 for m in out.macs.tolist())
    else:
        assert out.macs.tolist() == [float(base)] * 3


@pytest.mark.parametrize("case", CASES)
def test_a_saved_model_opens_as_the_same_kind_with_the_same_answers(case, tmp_path):
    model = build(case)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = open_model(path)
    assert type(loaded) is type(model) and loaded.kind == model.kind
    assert loaded.classes == model.classes
    assert loaded.config() == model.config()
    assert loaded.exit_names() == model.exit_names()
    assert torch.allclose(loaded(images()), model(images()), atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_an_expert_answers_exactly_as_the_full_model_or_the_cut_is_refused(case):
    model = build(case)
    keep = model.classes[:2]
    if model.cut_problem:
        with pytest.raises(NhlError, match="cut"):
            cut_model(model, keep)
        return
    expert = cut_model(model, keep)
    columns = [model.classes.index(c) for c in expert.classes]
    assert sorted(expert.classes) == sorted(keep)
    assert torch.allclose(expert(images()), model(images())[:, columns], atol=1e-5)
    assert expert.parameter_groups()["total"] < model.parameter_groups()["total"]


@pytest.mark.parametrize("case", CASES)
def test_profile_reports_the_base_network_and_any_exits(case, tmp_path):
    model = build(case)
    path = save_model(model, tmp_path / "m.safetensors")
    report = profile_model_file(path, (1,), latency=False)
    assert report["kind"] == model.kind
    assert report["cost"]["params"]["total"] == model.base_network.parameter_groups()["total"]
    assert report["cost"]["gmacs"] == pytest.approx(count_macs(model.base_network) / 1e9, abs=1e-6)
    assert ("gates" in report) == bool(model.exit_names())


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_every_kind_exports_to_onnx_with_the_same_answers(case, tmp_path):
    from nhlcli.export import export_onnx, read_onnx_metadata

    model = build(case)
    path = save_model(model, tmp_path / "m.safetensors")
    report = export_onnx(path, tmp_path / "m.onnx", check=True)  # parity against torch, or no file
    assert report["outputs"] == model.export_output_names()
    assert read_onnx_metadata(tmp_path / "m.onnx")["nhl_kind"] == model.kind
