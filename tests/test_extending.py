"""docs/extending.md, run as written: a new model kind is one module plus its registrations, and
the rest of nhl (save/open, infer, profile, cut refusal, gates, export) reaches it unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from nhlcli.errors import NhlError
from nhlcli.model import registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## `` section of the doc, in order."""
    text = DOC.read_text(encoding="utf-8")
    part = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


@pytest.fixture
def registries_restored():
    """The doc registers a kind and a variant; other tests must not see them."""
    kinds, variants = dict(registry.MODEL_KINDS), dict(registry.VARIANTS)
    yield
    for live, saved in ((registry.MODEL_KINDS, kinds), (registry.VARIANTS, variants)):
        live.clear()
        live.update(saved)


def test_the_model_kind_example_runs_and_the_new_kind_goes_everywhere(
    tmp_path, monkeypatch, registries_restored
):
    from nhlcli.experts import cut_model
    from nhlcli.model.contract import NhlModel
    from nhlcli.model.gated import GatedModel, GateSpec
    from nhlcli.model.loading import open_model

    monkeypatch.chdir(tmp_path)
    definition, use = python_blocks("A model kind with a new structure")
    namespace: dict = {"__name__": "cosine_example"}
    exec(compile(definition, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own code
    exec(compile(use, str(DOC), "exec"), namespace)  # noqa: S102
    model = namespace["model"]
    assert isinstance(model, NhlModel) and registry.VARIANTS["flat-cosine"].kind == "flat-cosine"
    # the file it saved opens as the new kind, whose logits are bounded by the cosine scale
    reopened = open_model(tmp_path / "pets-cosine.safetensors")
    assert type(reopened).__name__ == "CosineFlatModel" and reopened.kind == "flat-cosine"
    logits = reopened(torch.randn(4, 3, 64, 64))
    assert logits.abs().max() <= 16.0 + 1e-4
    assert reopened.class_weight_rows().shape == (3, reopened.model.num_features)
    with pytest.raises(NhlError, match="no per-class branches to cut"):
        cut_model(reopened, ["cat", "dog"])
    # gates sit on it like on any kind: an exit after stage 1 with a threshold nothing reaches
    gated = GatedModel(reopened, GateSpec(stages=[1], thresholds=[1e9])).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(gated(x), reopened(x), atol=1e-5)
    assert namespace["report"]["cost"]["params"]["total"] == reopened.parameter_groups()["total"]


def test_the_data_set_example_trains_and_evaluates_from_its_spec(tmp_path, monkeypatch):
    from nhlcli.data import DATASETS
    from nhlcli.model.loading import open_model

    monkeypatch.chdir(tmp_path)
    definition, use = python_blocks("A data set")
    namespace: dict = {"__name__": "arrays_example"}
    exec(compile(definition, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own code
    try:
        exec(compile(use, str(DOC), "exec"), namespace)  # noqa: S102
    finally:
        DATASETS.pop("arrays", None)
    run, report = namespace["run"], namespace["report"]
    assert run.result.epochs_done == 1 and run.config.workers == 0  # in memory: no loader workers
    assert report["split"] == "test" and report["images"] == 12  # what the spec calls val
    model = open_model(tmp_path / "arrays.safetensors")
    assert model.input_config.size == (1, 24, 24)  # grey images at the spec's size
    assert model.classes == ["circle", "square", "triangle"]
