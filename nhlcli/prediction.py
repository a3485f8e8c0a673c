"""Classify image files with a model (or an expert): the library behind ``nhl predict``.

Every image is read by :func:`nhlcli.data.images.read_image`, the reader of the training and
evaluation data, and goes through the model's own evaluation transform (size, crop and
normalisation recorded in its file), so a prediction here is what ``nhl eval`` would have
computed for the same file. Probabilities are the softmax over the model's classes; for an
expert that is its own classes (paper 003, eq. 3), for a
:class:`~nhlcli.evaluation.ClassSubset` the kept ones.

Images are decoded by a DataLoader (``workers`` processes beside the model) and go through the
model in batches, as in ``nhl eval``. With ``bad_images="report"`` an image that cannot be read
(corrupt, truncated, not an image, a FIFO found in a folder) does not stop the run: its result
carries an ``error`` instead of classes. :func:`expand_inputs` turns the command line's files,
folders and globs into the list of image files; :func:`write_predictions` writes the results as
CSV or JSON lines.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from nhlcli.data.errors import UnreadableImageError
from nhlcli.data.images import image_file_problem, read_image
from nhlcli.errors import NhlError
from nhlcli.model.contract import NhlModel, module_device
from nhlcli.progress import ImageProgress
from nhlcli.text import one_line, printable

PREDICT_HINT = "give image files Pillow can open (PNG, JPEG, ...)"
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
BAD_IMAGES = ("raise", "report")
_GLOB_CHARS = frozenset("*?[")


def check_image_path(path: Path) -> None:
    """Refuse a path that cannot be an image file (missing, a folder, a FIFO, a device) before any
    image is decoded; only ``stat`` is used, so a FIFO or device is never opened."""
    problem, shown = image_file_problem(path), printable(str(path))
    if problem == "does not exist":
        raise NhlError(f"image {shown} does not exist; check the path")
    if problem is not None and path.is_dir():
        raise NhlError(f"{shown} is a folder; give image files (e.g. {shown}/*.jpg)")
    if problem is not None:
        raise NhlError(f"image {shown} {problem}; {PREDICT_HINT}")


def _folder_images(folder: Path, required: bool = True) -> list[Path]:
    from timm.data.readers.img_extensions import get_img_extensions

    from nhlcli.data.folder import find_images

    found = sorted(Path(p) for p in find_images(folder))
    if not found and required:
        extensions = ", ".join(sorted(get_img_extensions()))
        raise NhlError(
            f"{printable(str(folder))} is a folder with no image files in it, at any depth "
            f"(looked for {extensions}); give another folder or the files themselves"
        )
    return found


def _file_or_folder(path: Path, required: bool = True) -> list[Path]:
    if path.is_dir():
        return _folder_images(path, required)
    check_image_path(path)
    return [path]


def _one_input(text: str) -> list[Path]:
    """One command-line input: an existing path (or a name without pattern characters) as it is,
    else a pattern expanded as a shell would."""
    if os.path.lexists(text) or not _GLOB_CHARS & set(text):
        return _file_or_folder(Path(text))
    found = [
        p for match in sorted(glob.glob(text, recursive=True)) for p in _file_or_folder(Path(match), False)
    ]
    if not found:
        raise NhlError(f"{printable(text)} matches no image file; check the pattern")
    return found


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files that ``nhl predict``'s inputs name, in the order given, each once.

    A file is taken as it is (whatever its name; a missing one, a FIFO or a device is refused). A
    folder gives every image below it, at any depth (the image extensions and the walk of the
    ImageFolder data, :func:`nhlcli.data.folder.find_images`), sorted by path. A pattern with
    ``*``, ``?`` or ``[`` that names no existing file is expanded here (``**`` reaches into
    subfolders), as a shell would, each match then taken as a file or folder. An input that
    gives no image (an empty folder, a pattern matching nothing) is a one-line :class:`NhlError`.
    """
    if not inputs:
        raise NhlError("give at least one image file, folder or pattern")
    paths: list[Path] = []
    for given in inputs:
        paths.extend(_one_input(str(given)))
    return list(dict.fromkeys(paths))


def load_image(path: str | Path, mode: str | None = None) -> Image.Image:
    """An image file as the models see it: :func:`nhlcli.data.images.read_image`, the reader of the
    training and evaluation data too (``mode`` ``"L"``/``"RGB"``; ``None``: grey files "L", the
    rest "RGB"). Any problem is a one-line :class:`NhlError` naming the file.
    """
    path = Path(path)
    check_image_path(path)
    return read_image(path, mode, hint=PREDICT_HINT)


def eval_transform(model: nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """The model's own evaluation transform (resize, centre crop, normalise) from its input config."""
    from nhlcli.data.loaders import build_transform

    inp = model.input_config
    return build_transform(
        inp.size[1],
        is_training=False,
        mean=inp.mean,
        std=inp.std,
        in_chans=inp.size[0],
        interpolation=inp.interpolation,
        crop_pct=inp.crop_pct,
    )


def check_top_k(top_k: int, num_classes: int) -> int:
    """``top_k`` clipped to the number of classes; below 1 is an error."""
    if top_k < 1:
        raise NhlError(f"{top_k}: ask for at least 1 class", "top_k")
    return min(top_k, num_classes)


def image_error(exc: BaseException) -> str:
    """The one-line reason an image could not be read, without the advice every such line ends in."""
    text = one_line(exc)
    return text.removesuffix(f"; {PREDICT_HINT}")


class _ImageFiles(Dataset):
    """Image files as model inputs: ``(tensor, "")``, or with ``report`` a blank tensor and the
    reason for a file that cannot be read (so one bad file does not stop the batch)."""

    def __init__(self, paths: Sequence[Path], model: nn.Module, report: bool) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = eval_transform(model)
        self.mode = "L" if model.input_config.size[0] == 1 else "RGB"
        self.report = report
        side = model.input_config.size[1]
        self.blank = torch.zeros_like(self.transform(Image.new(self.mode, (side, side))))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            image = read_image(self.paths[index], self.mode, hint=PREDICT_HINT)
        except UnreadableImageError as exc:
            if not self.report:
                raise
            return self.blank, image_error(exc)
        return self.transform(image), ""


def predict_images(
    model: NhlModel,
    paths: Sequence[str | Path],
    top_k: int = 5,
    attention: Mapping[int, torch.Tensor] | None = None,
    batch_size: int = 32,
    *,
    workers: int = 0,
    bad_images: str = "raise",
    progress: ImageProgress | None = None,
    amp: bool = True,
) -> list[dict[str, Any]]:
    """The ``top_k`` most probable classes of each image, most probable first.

    ``model`` is any model kind (:class:`~nhlcli.model.contract.NhlModel`): a loaded model, an
    expert, a gated file; it runs through its one inference entry, ``infer``. ``attention`` is the
    per-level mapping of :func:`nhlcli.model.attention.class_attention` (NHL models only).
    Returns one ``{"file", "top": [{"id", "name", "probability"}, ...], "error"}`` per path, in
    order. A gated model (``nhl gates``) adds each image's ``exit`` and ``gmacs``; an image that
    left at a hinge gate gets the softmax of its margins, a ranking rather than a calibrated
    probability.

    ``bad_images="raise"``: every path is checked before any work (a missing file, a folder, a
    FIFO is refused) and the first image that cannot be decoded raises a one-line
    :class:`NhlError`. ``"report"``: such an image gets ``"top": []``, ``"error"`` its reason
    (``exit``/``gmacs`` ``None``), and the rest are predicted; ``error`` is ``None`` otherwise.
    ``workers`` DataLoader processes decode images beside the model (none when all fit in one
    batch); ``progress`` hears of every batch; ``amp``: mixed precision on a GPU, as ``nhl eval``.
    """
    from nhlcli.data.loaders import make_loader

    if batch_size < 1:
        raise NhlError(f"must be at least 1, got {batch_size}", "batch_size")
    if workers < 0:
        raise NhlError(f"must be 0 or more, got {workers}", "workers")
    if bad_images not in BAD_IMAGES:
        raise NhlError(f"{bad_images!r}: use one of {', '.join(BAD_IMAGES)}", "bad_images")
    k = check_top_k(top_k, len(model.tree.classes))
    paths = [Path(p) for p in paths]
    report = bad_images == "report"
    if not report:
        for path in paths:  # fail on a typo, a folder or a FIFO before any work is done
            check_image_path(path)
    batches = -(-len(paths) // batch_size)  # workers only pay off when one batch decodes beside another
    loader = make_loader(
        _ImageFiles(paths, model, report),
        batch_size=batch_size,
        workers=min(workers, batches) if batches > 1 else 0,
    )
    rows = _Rows(model, k, amp)
    was_training = model.training
    model.eval()
    if progress is not None:
        progress.start(len(paths), "predicting")
    results: list[dict[str, Any]] = []
    try:
        for images, errors in loader:
            chunk = paths[len(results) : len(results) + len(errors)]
            results += rows.of_batch(images, errors, chunk, attention)
            if progress is not None:
                progress.advance(len(errors))
    finally:
        model.train(was_training)
    return results


class _Rows:
    """One result row per image of a batch: its top classes, and for a gated model its exit and
    cost; an image that could not be read gets its error instead."""

    def __init__(self, model: NhlModel, top_k: int, amp: bool) -> None:
        self.model = model
        self.top_k = top_k
        self.amp = amp
        self.device = module_device(model)
        self.names = [model.tree.node(c).name for c in model.tree.classes]
        self.exit_names = model.exit_names()  # a gated model says where each image left; others have none
        self.other = model.has_other  # an expert with an other head says whether it is one of its classes

    def of_batch(
        self,
        images: torch.Tensor,
        errors: Sequence[str],
        files: Sequence[Path],
        attention: Mapping[int, torch.Tensor] | None,
    ) -> list[dict[str, Any]]:
        good = [j for j, error in enumerate(errors) if not error]
        rows: dict[int, dict[str, Any]] = {}
        if good:
            batch = images if len(good) == len(errors) else images[good]
            rows.update(zip(good, self._predicted(batch, [files[j] for j in good], attention), strict=True))
        for j, error in enumerate(errors):
            if error:
                rows[j] = {"file": str(files[j]), "top": []}
                if self.exit_names:
                    rows[j].update(exit=None, gmacs=None)
                if self.other:
                    rows[j]["other"] = None
                rows[j]["error"] = error
        return [rows[j] for j in range(len(errors))]

    def _predicted(
        self, batch: torch.Tensor, files: Sequence[Path], attention: Mapping[int, torch.Tensor] | None
    ) -> list[dict[str, Any]]:
        from nhlcli.devices import autocast_for

        classes = self.model.tree.classes
        # exits and the other head compare scores with thresholds at full precision, as nhl eval does
        with torch.no_grad(), autocast_for(self.device, self.amp and not self.exit_names and not self.other):
            batch = batch.to(self.device, non_blocking=True)
            out = self.model.infer(batch, attention, count_macs=bool(self.exit_names))  # gated rows: cost
            values, indices = out.logits.float().softmax(dim=1).topk(self.top_k, dim=1)
        rows = []
        for row, (file, row_p, row_i) in enumerate(
            zip(files, values.tolist(), indices.tolist(), strict=True)
        ):
            top = [
                {"id": classes[i], "name": self.names[i], "probability": p}
                for p, i in zip(row_p, row_i, strict=True)
            ]
            result: dict[str, Any] = {"file": str(file), "top": top}
            if self.exit_names:
                result["exit"] = self.exit_names[int(out.exits[row])]
                result["gmacs"] = float(out.macs[row]) / 1e9
            if self.other:  # True: none of the expert's classes (its top classes are shown anyway)
                result["other"] = None if out.other is None else bool(out.other[row])
            result["error"] = None
            rows.append(result)
        return rows


def predict_files(
    model_file: str | Path,
    images: Sequence[str],
    *,
    top_k: int = 5,
    output: str | Path | None = None,
    attend: Sequence[tuple[str, float]] = (),
    attend_level: str | None = None,
    route_top_k: int | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | None = None,
    progress: ImageProgress | None = None,
) -> dict[str, Any]:
    """What ``nhl predict`` does: open a model file, predict every image that ``images`` (files,
    folders, glob patterns) names, an unreadable one reported in its row, and write the rows to
    ``output`` (.csv or .jsonl) when given. Returns the model, its class count, ``top_k``, the
    attention applied and the rows (``predictions``), as ``nhl predict --json`` prints them.

    Every input is checked before the model is read; ``workers`` (default: from the cores, as
    ``nhl eval`` on image folders) decode beside the model; ``attend``: ``(class, scale)`` pairs."""
    from nhlcli.data.defaults import MAX_WORKERS, usable_cores
    from nhlcli.devices import resolve_device
    from nhlcli.evaluation import (
        attend_pairs,
        attention_summary,
        check_attention_options,
        check_gated_options,
    )
    from nhlcli.model.attention import class_attention
    from nhlcli.model.loading import open_model
    from nhlcli.paths import check_not_among, check_output_file

    check_top_k(top_k, 1)
    if workers is not None and workers < 0:
        raise NhlError(f"must be 0 or more, got {workers}", "workers")
    if output is not None:
        output_format(output, "`output`")
    pairs = attend_pairs(attend)
    check_attention_options(pairs, attend_level, None)
    files = expand_inputs(images)
    given = [Path(p) for p in images if Path(p).exists()]  # files and folders as named; not patterns
    check_output_file(output, [model_file, *given], "`output`")
    if output is not None:
        check_not_among(output, files, "`output`")  # a link to one of the images, say
    if workers is None:  # one core for the model, the rest decode
        cores = usable_cores()
        workers = 0 if cores <= 2 else min(MAX_WORKERS, cores - 1)
    model = open_model(model_file, resolve_device(device))
    check_gated_options(model, route_top_k, pairs)
    attention = class_attention(model, pairs, attend_level) if pairs else None
    k = check_top_k(top_k, len(model.tree.classes))
    results = predict_images(
        model, files, top_k=k, attention=attention, batch_size=batch_size, workers=workers,
        bad_images="report", progress=progress,
    )  # fmt: skip
    if output is not None:
        write_predictions(output, results, k, gated=bool(model.exit_names()), other=model.has_other)
    return {
        "model": str(model_file),
        "num_classes": len(model.tree.classes),
        "top_k": k,
        "attention": attention_summary(model.tree, pairs, attend_level),
        "predictions": results,
    }


def output_format(path: str | Path, label: str = "output") -> str:
    """``"csv"`` or ``"jsonl"`` from the output file's suffix; any other suffix is refused."""
    kind = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise NhlError(
            f"{label} {printable(str(path))}: name a .csv or .jsonl file (the suffix picks the format)"
        )
    return kind


def csv_columns(top_k: int, gated: bool, other: bool = False) -> list[str]:
    """The columns of the CSV output: the file, ``top1_id``, ``top1_name``, ``top1_probability``
    and so on to ``top_k``, a gated model's ``exit`` and ``gmacs``, an expert's ``other`` (true:
    none of its classes), and ``error``."""
    columns = ["file"]
    for rank in range(1, top_k + 1):
        columns += [f"top{rank}_id", f"top{rank}_name", f"top{rank}_probability"]
    return [*columns, *(["exit", "gmacs"] if gated else []), *(["other"] if other else []), "error"]


def _csv_row(result: Mapping[str, Any], columns: Sequence[str]) -> list[Any]:
    cells: dict[str, Any] = {"file": result["file"]}
    for rank, entry in enumerate(result["top"], start=1):
        for key in ("id", "name", "probability"):
            cells[f"top{rank}_{key}"] = entry[key]
    for key in ("exit", "gmacs", "other", "error"):
        cells[key] = result.get(key)
    return ["" if cells.get(c) is None else cells[c] for c in columns]


def write_predictions(
    path: str | Path,
    results: Sequence[Mapping[str, Any]],
    top_k: int,
    gated: bool = False,
    other: bool = False,
) -> Path:
    """Write :func:`predict_images`' results to ``path``, one row per image, atomically (a
    temporary file renamed into place): CSV with :func:`csv_columns`, or JSON lines with the
    fields of each result, by the suffix (:func:`output_format`). Names that are not valid
    UTF-8 keep their bytes in CSV and are ``\\u`` escapes in JSON."""
    from nhlcli.atomic import atomic_write

    kind = output_format(path)

    def write(tmp: Path) -> None:
        if kind == "csv":
            with tmp.open("w", encoding="utf-8", errors="surrogateescape", newline="") as file:
                columns = csv_columns(top_k, gated, other)
                writer = csv.writer(file)
                writer.writerow(columns)
                writer.writerows(_csv_row(r, columns) for r in results)
            return
        with tmp.open("w", encoding="utf-8", errors="backslashreplace") as file:
            for result in results:
                file.write(json.dumps(result, ensure_ascii=False) + "\n")

    return atomic_write(path, write)
