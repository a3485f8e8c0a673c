"""ONNX export of nhl model files, with a parity check against torch (``nhl export``).

Edge runtimes run ONNX, not our Python. The exported graph takes ``images [batch, C, H, W]``
(normalised as the metadata says) with a dynamic batch and returns ``logits`` in the metadata's
class order; a gated file also returns each exit gate's outputs (``gate_1``, ...), with the
thresholds and the exit rule in the metadata, so the runtime can stop early where it can split
the graph. Branch levels are exported through their plain convolution path (the oneDNN-fused
inference kernels are CPU-specific torch ops that ONNX does not have); the parity check proves
the answers are the same.

onnx, onnxscript and onnxruntime come with the ``export`` extra: ``pip install nhlcli[export]``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nhlcli.atomic import atomic_write
from nhlcli.errors import NhlError
from nhlcli.jsonio import loads_json
from nhlcli.model.contract import NhlModel
from nhlcli.text import one_line

OPSET = 18
# the opsets torch.onnx's exporter writes: it builds opset 18 graphs and converts them upwards (it
# writes 18 for anything lower), up to the newest opset this torch knows
MIN_OPSET = 18
MAX_OPSET = int(getattr(getattr(torch.onnx, "_constants", None), "ONNX_MAX_OPSET", 23))
TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise NhlError(
            f"{module} is not installed; install the export extra: pip install 'nhlcli[export]'"
        ) from None


def has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Exportable(nn.Module):
    """The model's forward with every output an ONNX graph needs (logits, then gate outputs)."""

    def __init__(self, model: NhlModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.export_outputs(images)


def output_names(model: NhlModel) -> list[str]:
    return model.export_output_names()


def onnx_metadata(model: nn.Module, source: str | Path, opset: int) -> dict[str, str]:
    """What a runtime needs besides the graph: classes, normalisation, gates; all as strings.
    ``nhl_source_sha256`` names the exact model file it was exported from (when it was hashed)."""
    tree = model.tree
    inp = model.input_config
    meta: dict[str, Any] = {
        "nhl_format": "nhl-onnx",
        "nhl_source": Path(source).name,
        "nhl_kind": model.kind,
        "opset": opset,
        "classes": [{"id": c, "name": tree.node(c).name} for c in tree.classes],
        "input_size": list(inp.size),
        "mean": list(inp.mean),
        "std": list(inp.std),
        "interpolation": inp.interpolation,
        "crop_pct": inp.crop_pct,
    }
    if getattr(model, "file_sha256", None):
        meta["nhl_source_sha256"] = model.file_sha256
    file_meta = getattr(model, "metadata", {}) or {}
    if file_meta.get("cost"):
        meta["cost"] = file_meta["cost"]
    meta.update(model.export_metadata())
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _export(model: nn.Module, path: Path, opset: int) -> None:
    wrapper = _Exportable(model).eval()
    size = tuple(int(v) for v in model.input_config.size)
    example = torch.randn(2, *size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # grad mode selects the branch levels' plain-convolution path (no oneDNN-only ops); one run
    # first fills the levels' index caches, so the exporter sees no attribute assigned
    with torch.enable_grad():
        wrapper(example)
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=output_names(model),
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
        )
    program.save(str(path))


def parity(model: nn.Module, path: str | Path, batches: Sequence[int] = PARITY_BATCHES) -> dict[str, Any]:
    """Max abs difference between onnxruntime and torch on random inputs, per output."""
    ort = _require("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own kinds, e.g. for an opset it does not know
        first = one_line(exc, 200)
        raise NhlError(
            f"onnxruntime {ort.__version__} cannot run the exported graph ({first}); the ONNX file was not "
            f"written. Export with `opset` {OPSET}, or without the parity check (`check` off)"
        ) from exc
    wrapper = _Exportable(model).eval()
    size = tuple(int(v) for v in model.input_config.size)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    rows = []
    for b in batches:
        x = torch.randn(b, *size, generator=generator)
        with torch.no_grad():
            expected = wrapper(x)
        got = session.run(None, {"images": x.numpy()})
        diffs = [float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected, strict=True)]
        rows.append({"batch": b, "max_abs_diff": max(diffs)})
        worst = max(worst, *diffs)
    return {"max_abs_diff": worst, "batches": rows}


def check_export_options(opset: int, tolerance: float) -> None:
    """Refuse an opset the exporter cannot write, or a tolerance no check can meet, before any work."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise NhlError(
            f"{opset} is not an opset torch's ONNX exporter writes; choose one from {MIN_OPSET} to "
            f"{MAX_OPSET} (default {OPSET})",
            "opset",
        )
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise NhlError(
            f"must be a finite number of at least 0 (the largest logit difference accepted), got {tolerance}",
            "tolerance",
        )


def written_opset(proto: Any) -> int | None:
    """The default-domain opset an ONNX model declares (what it really is, whatever was asked)."""
    versions = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else None


def export_onnx(
    model_file: str | Path,
    output: str | Path,
    opset: int = OPSET,
    check: bool | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Export a model file (full, expert, flat or gated) to ONNX; ``check`` (default: when
    onnxruntime is installed) compares onnxruntime with torch and fails above ``tolerance``,
    leaving no file behind. The file records the opset it was written in and the sha256 of the
    model file it came from (``nhl profile`` times torch on that file only)."""
    from nhlcli.model.files import read_model_file
    from nhlcli.model.loading import model_from_contents
    from nhlcli.paths import check_output_file

    check_export_options(opset, tolerance)
    output = check_output_file(output, [model_file], label="`output`")
    onnx = _require("onnx")
    _require("onnxscript")
    if output.suffix.lower() != ".onnx":
        raise NhlError(f"{output}: name the ONNX file .onnx", "output")
    check = has_onnxruntime() if check is None else check
    model = model_from_contents(read_model_file(model_file, whole_digest=True), "cpu")
    started = time.perf_counter()
    report: dict[str, Any] = {"source": str(model_file), "output": str(output), "opset": opset}

    def write(tmp: Path) -> None:
        try:
            _export(model, tmp, opset)
        except NhlError:
            raise
        except Exception as exc:  # the exporter raises many kinds; one line for the user
            first = one_line(exc, 300)
            raise NhlError(f"ONNX export of {model_file} failed: {first}") from exc
        proto = onnx.load(str(tmp))
        if written_opset(proto) != opset:
            raise NhlError(
                f"the ONNX exporter wrote opset {written_opset(proto)} instead of the {opset} asked for; "
                f"the ONNX file was not written. Choose `opset` {OPSET}"
            )
        for key, value in onnx_metadata(model, model_file, opset).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        if check:
            result = parity(model, tmp)
            report["parity"] = {**result, "tolerance": tolerance}
            if not result["max_abs_diff"] <= tolerance:
                raise NhlError(
                    f"onnxruntime and torch disagree by {result['max_abs_diff']:.3g} (tolerance "
                    f"{tolerance:g}); the ONNX file was not written. Report this with the model's backbone"
                )

    atomic_write(output, write)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["bytes"] = output.stat().st_size
    report["outputs"] = output_names(model)
    return report


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The nhl metadata of an exported file, parsed; a clear error for any other ONNX file."""
    onnx = _require("onnx")
    path = Path(path)
    if not path.is_file():
        raise NhlError(f"{path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise NhlError(f"{path} is not a readable ONNX file ({one_line(exc, 200)})") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("nhl_format") != "nhl-onnx":
        raise NhlError(
            f"{path} is an ONNX file without nhl metadata; export one with 'nhl export MODEL -o x.onnx'"
        )
    plain = ("nhl_format", "nhl_source", "nhl_kind", "interpolation", "nhl_source_sha256")
    meta = {k: (v if k in plain else loads_json(v, f"{path}: its metadata {k!r}")) for k, v in props.items()}
    meta["params"] = sum(int(torch.Size(t.dims).numel()) for t in proto.graph.initializer)
    return meta


def source_mismatch(onnx_meta: dict[str, Any], model: nn.Module) -> str | None:
    """How a torch model differs from the one an ONNX file was exported from (``None``: it is that
    one): by the recorded sha256 of the file, or for exports from before it was recorded, by kind,
    classes and input size."""
    recorded = onnx_meta.get("nhl_source_sha256")
    if recorded:
        actual = getattr(model, "file_sha256", None)
        if actual != recorded:
            return f"its sha256 is {str(actual)[:12]}..., the export recorded {str(recorded)[:12]}..."
        return None
    if onnx_meta.get("nhl_kind") not in (None, model.kind):
        return f"a {model.kind} model, the export is of a {onnx_meta['nhl_kind']} model"
    classes = [c.get("id") if isinstance(c, dict) else c for c in onnx_meta.get("classes") or []]
    if classes != list(model.tree.classes):
        return f"its {len(model.tree.classes)} classes differ from the export's {len(classes)}"
    size = [int(v) for v in model.input_config.size]
    if list(onnx_meta.get("input_size") or []) != size:
        return f"its input size {size} is not the export's {onnx_meta.get('input_size')}"
    return None


def onnx_latency(
    path: str | Path,
    batch: int,
    size: Sequence[int],
    repeats: int = 20,
    threads: int | None = None,
    budget_s: float = 5.0,
) -> dict[str, Any]:
    """Median onnxruntime wall time of one run at ``batch`` (the torch report's protocol)."""
    from nhlcli.profiling import latency_row, timed_runs

    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": torch.randn(batch, *size).numpy()}
    return latency_row(batch, timed_runs(lambda: session.run(None, feed), repeats, budget_s=budget_s))


def profile_onnx(
    path: str | Path,
    batch_sizes: Sequence[int] = (1, 16),
    repeats: int = 20,
    threads: int | None = None,
    torch_file: str | Path | None = None,
) -> dict[str, Any]:
    """Params (from the graph's initializers), GMACs (counted on the torch model at export) and
    onnxruntime latency, beside the torch latency of the same model file when it can be found
    (``torch_file``, or the exported source next to the ONNX file)."""
    from nhlcli.profiling import measure_latency

    path = Path(path)
    meta = read_onnx_metadata(path)
    if threads is not None:
        if threads < 1:
            raise NhlError(f"must be at least 1, got {threads}", "threads")
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    size = meta["input_size"]
    report: dict[str, Any] = {
        "file": str(path),
        "kind": meta["nhl_kind"],
        "classes": len(meta["classes"]),
        "opset": meta["opset"],
        "params": meta["params"],  # weights stored in the graph (BatchNorm folded into convolutions)
        "gmacs": (meta.get("cost") or {}).get("gmacs"),
        "threads": threads,
        "onnxruntime": [onnx_latency(path, b, size, repeats, threads) for b in batch_sizes],
    }
    source = Path(torch_file) if torch_file else path.parent / meta["nhl_source"]
    if torch_file and not source.is_file():
        raise NhlError(
            f"{source} is not a model file; give `torch_file` the model file {path.name} was exported from"
        )
    if source.is_file():
        from nhlcli.model.files import read_model_file
        from nhlcli.model.loading import model_from_contents

        model = model_from_contents(read_model_file(source, whole_digest=True), "cpu")
        problem = source_mismatch(meta, model)
        if problem:
            raise NhlError(
                f"{source} is not the model {path.name} was exported from ({problem}); give `torch_file` "
                "the model file it was exported from, or leave it out to time onnxruntime alone"
            )
        report["torch_file"] = str(source)
        report["torch"] = [measure_latency(model, b, repeats=repeats) for b in batch_sizes]
    return report
