"""Class lists: what a tree is built for, from a preset, a text/JSON file or an ImageFolder."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nhlcli.errors import NhlError
from nhlcli.jsonio import read_json
from nhlcli.taxonomy.labels import ROOT_ID, name_problem, quoted
from nhlcli.text import printable

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

PRESETS = ("imagenet-1k", "fashion-mnist", "cifar-100", "emoji")
# The columns of a line of a text class list, tab-separated; the last two are optional.
TEXT_COLUMNS = ("id", "name", "aliases")
JSON_KEYS = ("id", "name", "wordnet", "aliases")


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
    lemmas = wordnet_lemmas()
    entries = []
    for wnid in wnids:
        names = lemmas.get(wnid) or (wnid,)
        entries.append(ClassEntry(wnid, names[0], wnid, names[1:]))
    return tuple(entries)


@lru_cache(maxsize=1)
def wordnet_lemmas() -> dict[str, tuple[str, ...]]:
    """WordNet's words for each ImageNet-21k noun id (``n01440764`` -> tench, Tinca tinca).

    timm ships them (``imagenet_synset_to_lemma.txt``), so a bare WordNet id in a class list or
    an ImageFolder gets its name without nltk's WordNet being installed.
    """
    lemmas: dict[str, tuple[str, ...]] = {}
    for line in timm_info_file("imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines():
        wnid, _, words = line.partition("\t")
        names = tuple(n.strip() for n in words.split(",") if n.strip())
        if names:
            lemmas[wnid.strip()] = names
    return lemmas


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
    if name == "emoji":
        from nhlcli.taxonomy.emoji import emoji_glyphs

        return [ClassEntry(g.id, g.name, None, g.aliases) for g in emoji_glyphs()]
    raise NhlError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")


def load_class_list(spec: str | Path) -> list[ClassEntry]:
    """The classes named by ``spec``: a preset name, an ImageFolder directory, or a text/JSON file
    (also spelled ``@file``).

    Text files hold one class a line: ``id``, or ``id<TAB>name``, or ``id<TAB>name<TAB>alias,alias``;
    blank lines and ``#`` comments are skipped. An id that is a WordNet id (``n01440764``) or
    synset name (``sandal.n.01``) is used as the class's WordNet reference. JSON files hold a
    list of ids or of ``{"id", "name", "wordnet", "aliases"}`` objects.
    """
    text = str(spec)
    if not text.strip():
        raise NhlError(
            f"is empty; give a preset ({', '.join(PRESETS)}), a class-list file or an ImageFolder directory",
            "classes",
        )
    if text in PRESETS:
        return preset_classes(text)
    path = class_list_path(text) or Path(text)
    if path.is_dir():
        entries = classes_from_image_folder(path)
    elif path.is_file():
        entries = _classes_from_json(path) if path.suffix == ".json" else _classes_from_text(path)
    else:
        raise NhlError(
            f"{quoted(text)} is neither a preset ({', '.join(PRESETS)}) nor an existing file or directory",
            "classes",
        )
    _check_unique(entries, printable(str(path)))
    return entries


def class_list_path(spec: str | Path) -> Path | None:
    """The file or folder a class-list spec reads (``@file`` is the file); ``None`` for a preset.

    Commands pass it to their output checks, so that an output never replaces the class list.
    """
    text = str(spec)
    if text in PRESETS:
        return None
    if text.startswith("@") and not Path(text).exists() and len(text) > 1:
        return Path(text[1:])  # the @file spelling other commands take for lists
    return Path(text)


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
    where = f"class folder in {printable(str(root))}"
    return [known.get(f) or _checked(_entry_from_id(f), where) for f in folders]


def _entry_from_id(class_id: str, name: str | None = None, aliases: Sequence[str] = ()) -> ClassEntry:
    """A class from its id; a bare WordNet id gets WordNet's words as name and aliases, as an
    ImageFolder's wnid folders do, so ``n01440764`` reads "tench" everywhere."""
    wordnet = class_id if WNID_RE.match(class_id) or SYNSET_NAME_RE.match(class_id) else None
    aliases = tuple(aliases)
    if name is None and WNID_RE.match(class_id):
        words = wordnet_lemmas().get(class_id, ())
        if words:
            name = words[0]
            aliases = tuple(dict.fromkeys((*words[1:], *aliases)))
    if name is None:
        name = class_id.split(".")[0] if SYNSET_NAME_RE.match(class_id) else class_id
        name = name.replace("_", " ")
    return ClassEntry(class_id, name, wordnet, aliases)


def _classes_from_text(path: Path) -> list[ClassEntry]:
    shown = printable(str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NhlError(f"cannot read class list {shown}: {exc.strerror or exc}") from exc
    if b"\x00" in data:
        raise NhlError(f"{shown} holds NUL bytes: it is a binary file, not a text file of class names")
    try:  # utf-8-sig: a byte order mark some editors write is not part of the first class id
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise NhlError(
            f"{shown} is not a UTF-8 text file of class names (byte {exc.start} is not UTF-8); "
            "save it as UTF-8"
        ) from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        parts = [p.strip() for p in line.rstrip().split("\t")]  # a leading tab is an empty id
        if len(parts) > len(TEXT_COLUMNS):
            raise NhlError(
                f"{shown}, line {number}: {len(parts)} tab-separated columns, but a class line has at "
                f"most {len(TEXT_COLUMNS)}: {'<TAB>'.join(TEXT_COLUMNS)} (aliases separated by commas)"
            )
        if not parts[0]:
            raise NhlError(f"{shown}, line {number}: the class id (first column) is empty")
        aliases = [a.strip() for a in parts[2].split(",") if a.strip()] if len(parts) > 2 else []
        name = parts[1] if len(parts) > 1 and parts[1] else None
        entries.append(_checked(_entry_from_id(parts[0], name, aliases), f"{shown}, line {number}"))
    if not entries:
        raise NhlError(f"{shown} lists no classes; write one class id or name per line")
    return entries


def _classes_from_json(path: Path) -> list[ClassEntry]:
    data = read_json(path, "class list")
    path = Path(printable(str(path)))  # as messages show it
    if not isinstance(data, list) or not data:
        raise NhlError(f"{path} must hold a non-empty JSON list of class ids or objects")
    entries = []
    for i, item in enumerate(data):
        if isinstance(item, str) and item.strip():
            entries.append(_checked(_entry_from_id(item.strip()), f"{path}: item {i}"))
        elif isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"].strip():
            entries.append(_checked(_entry_from_object(item, f"{path}: item {i}"), f"{path}: item {i}"))
        else:
            raise NhlError(f"{path}: item {i} must be a class id or an object with an 'id'")
    return entries


def _entry_from_object(item: dict[str, Any], where: str) -> ClassEntry:
    """A class from a JSON object; unknown keys are refused rather than silently ignored."""
    extra = sorted(set(item) - set(JSON_KEYS))
    if extra:
        raise NhlError(
            f"{where} has unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}; "
            f"a class object has {', '.join(map(repr, JSON_KEYS))}"
        )
    for key in ("name", "wordnet"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise NhlError(f"{where}: {key!r} must be a string")
    aliases = item.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise NhlError(f"{where}: 'aliases' must be a list of strings")
    base = _entry_from_id(item["id"].strip(), item.get("name") or None, aliases)
    return ClassEntry(base.id, base.name, item.get("wordnet", base.wordnet), base.aliases)


def _checked(entry: ClassEntry, where: str) -> ClassEntry:
    """``entry`` if its id, name, WordNet reference and aliases can be names (see ``name_problem``)."""
    for what, text in (
        ("class id", entry.id),
        ("name", entry.name),
        ("WordNet reference", entry.wordnet or ""),
        *(("alias", a) for a in entry.aliases),
    ):
        problem = name_problem(text)
        if problem:
            raise NhlError(f"{where}: {what} {quoted(text)} {problem}")
    return entry


def _check_unique(entries: Sequence[ClassEntry], where: str) -> None:
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            raise NhlError(f"{where}: class {quoted(e.id)} is listed twice")
        seen.add(e.id)
