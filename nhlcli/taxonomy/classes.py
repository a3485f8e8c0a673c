"""Class lists: what a tree is built for, from a preset, a text/JSON file or an ImageFolder."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nhlcli.errors import NhlError
from nhlcli.taxonomy.tree import ROOT_ID

WNID_RE = re.compile(r"^n\d{8}$")
SYNSET_NAME_RE = re.compile(r"^[\w.'\-]+\.n\.\d\d$")


@dataclass(frozen=True)
class ClassEntry:
    """One class: its id (the leaf id in trees), display name, WordNet reference and aliases.

    ``wordnet`` is a WordNet 3.0 noun id (``n01440764``) or a synset name (``sandal.n.01``);
    ``None`` when unknown (the WordNet source then looks the name up).
    """

    id: str
    name: str
    wordnet: str | None = None
    aliases: tuple[str, ...] = ()


def leaf_node(entry: ClassEntry) -> dict[str, Any]:
    """A class's leaf in a nested tree dict (see ``Tree.from_nested``): id, name, WordNet id, aliases."""
    out: dict[str, Any] = {"id": entry.id, "name": entry.name}
    if entry.wordnet and WNID_RE.match(entry.wordnet):
        out["wnid"] = entry.wordnet
    if entry.aliases:
        out["aliases"] = list(entry.aliases)
    return out


def flat_nested(entries: Sequence[ClassEntry]) -> dict[str, Any]:
    """A one-level nested tree dict: the root and the classes (the paper's PHL)."""
    return {"id": ROOT_ID, "name": "all classes", "children": [leaf_node(e) for e in entries]}


# Fashion-MNIST's ten classes in label order, with the WordNet noun each one is.
FASHION_MNIST: tuple[ClassEntry, ...] = (
    ClassEntry("t-shirt", "T-shirt/top", "n03595614", ("tshirt", "top", "tee shirt")),
    ClassEntry("trouser", "Trouser", "n04489008", ("trousers", "pants")),
    ClassEntry("pullover", "Pullover", "n04370048", ("sweater",)),
    ClassEntry("dress", "Dress", "n03236735", ()),
    ClassEntry("coat", "Coat", "n03057021", ()),
    ClassEntry("sandal", "Sandal", "n04133789", ()),
    ClassEntry("shirt", "Shirt", "n04197391", ()),
    ClassEntry("sneaker", "Sneaker", "n03472535", ("gym shoe", "trainer")),
    ClassEntry("bag", "Bag", "n02774152", ("handbag",)),
    ClassEntry("ankle-boot", "Ankle boot", "n02872752", ("boot", "ankle boot")),
)

# CIFAR-100's official 20 superclasses and their fine classes (fine label order is alphabetical).
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

PRESETS = ("imagenet-1k", "fashion-mnist", "cifar-100")


def timm_info_file(name: str) -> Path:
    """A class-info file that timm ships (``timm/data/_info``), found without importing torch."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise NhlError("timm is not installed; pip install timm")
    return Path(spec.submodule_search_locations[0]) / "data" / "_info" / name


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ClassEntry, ...]:
    """ImageNet-1k's classes in the standard sorted-wnid order, names from timm's class info.

    Reads the same files as ``timm.data.ImageNetInfo`` directly, so that listing classes does
    not pay for importing torch.
    """
    wnids = timm_info_file("imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lemmas = {}
    for line in timm_info_file("imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines():
        wnid, _, lemma = line.partition("\t")
        lemmas[wnid] = lemma
    entries = []
    for wnid in wnids:
        names = [n.strip() for n in lemmas.get(wnid, wnid).split(",") if n.strip()]
        entries.append(ClassEntry(wnid, names[0], wnid, tuple(names[1:])))
    return tuple(entries)


def cifar100_classes() -> tuple[ClassEntry, ...]:
    """CIFAR-100's fine classes in label order (alphabetical, as in the official release)."""
    fine = sorted(c for members in CIFAR100_SUPERCLASSES.values() for c in members)
    return tuple(ClassEntry(c, c.replace("_", " ")) for c in fine)


def preset_classes(name: str) -> list[ClassEntry]:
    if name == "imagenet-1k":
        return list(imagenet_classes())
    if name == "fashion-mnist":
        return list(FASHION_MNIST)
    if name == "cifar-100":
        return list(cifar100_classes())
    raise NhlError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")


def load_class_list(spec: str | Path) -> list[ClassEntry]:
    """The classes named by ``spec``: a preset name, an ImageFolder directory, or a text/JSON file.

    Text files hold one class a line: ``id``, or ``id<TAB>name``, or ``id<TAB>name<TAB>alias,alias``;
    blank lines and ``#`` comments are skipped. An id that is a WordNet id (``n01440764``) or
    synset name (``sandal.n.01``) is used as the class's WordNet reference. JSON files hold a
    list of ids or of ``{"id", "name", "wordnet", "aliases"}`` objects.
    """
    text = str(spec)
    if text in PRESETS:
        return preset_classes(text)
    path = Path(text)
    if path.is_dir():
        entries = classes_from_image_folder(path)
    elif path.is_file():
        entries = _classes_from_json(path) if path.suffix == ".json" else _classes_from_text(path)
    else:
        raise NhlError(
            f"--classes {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file or directory"
        )
    _check_unique(entries, str(path))
    return entries


def image_folder_root(path: Path) -> Path:
    """The folder whose sub-folders are the classes: ``path/train`` when the data is split."""
    train = path / "train"
    return train if train.is_dir() else path


def classes_from_image_folder(path: Path) -> list[ClassEntry]:
    """Classes of an ImageFolder tree, in the order timm's folder reader assigns labels."""
    from timm.data.readers.reader_image_folder import natural_key

    root = image_folder_root(path)
    folders = sorted(
        (p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key
    )
    if not folders:
        raise NhlError(f"{root} has no class folders; an ImageFolder holds one folder per class")
    known = {e.id: e for e in imagenet_classes()} if any(WNID_RE.match(f) for f in folders) else {}
    return [known.get(f) or _entry_from_id(f) for f in folders]


def _entry_from_id(class_id: str, name: str | None = None, aliases: Sequence[str] = ()) -> ClassEntry:
    wordnet = class_id if WNID_RE.match(class_id) or SYNSET_NAME_RE.match(class_id) else None
    if name is None:
        name = class_id.split(".")[0] if SYNSET_NAME_RE.match(class_id) else class_id
        name = name.replace("_", " ")
    return ClassEntry(class_id, name, wordnet, tuple(aliases))


def _classes_from_text(path: Path) -> list[ClassEntry]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise NhlError(f"{path} is not a UTF-8 text file of class names") from exc
    entries = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        aliases = [a.strip() for a in parts[2].split(",") if a.strip()] if len(parts) > 2 else []
        entries.append(_entry_from_id(parts[0], parts[1] if len(parts) > 1 else None, aliases))
    if not entries:
        raise NhlError(f"{path} lists no classes; write one class id or name per line")
    return entries


def _classes_from_json(path: Path) -> list[ClassEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NhlError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise NhlError(f"{path} must hold a non-empty JSON list of class ids or objects")
    entries = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            entries.append(_entry_from_id(item))
        elif isinstance(item, dict) and isinstance(item.get("id"), str):
            base = _entry_from_id(item["id"], item.get("name"), item.get("aliases") or ())
            entries.append(ClassEntry(base.id, base.name, item.get("wordnet", base.wordnet), base.aliases))
        else:
            raise NhlError(f"{path}: item {i} must be a class id or an object with an 'id'")
    return entries


def _check_unique(entries: Sequence[ClassEntry], where: str) -> None:
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            raise NhlError(f"{where}: class {e.id!r} is listed twice")
        seen.add(e.id)
