"""The shipped trees and the offline sources: WordNet facts, reproducibility, subsets."""

from __future__ import annotations

import json

import pytest

from nhlcli.errors import NhlError
from nhlcli.taxonomy import build_tree, load_class_list, shipped_tree, shipped_tree_names
from nhlcli.taxonomy.classes import FASHION_MNIST, cifar100_classes, imagenet_classes
from nhlcli.taxonomy.compress import check_group_counts, default_group_counts
from nhlcli.taxonomy.sources import taxonomies_dir

SHARKS = ["great white shark", "tiger shark", "hammerhead"]
DOMESTIC_CATS = ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
EXPECTED_SHIPPED = {
    "imagenet-1k-wordnet-l2",
    "imagenet-1k-wordnet-l3",
    "imagenet-1k-wordnet-l4",
    "imagenet-1k-superclass-l2",
    "imagenet-1k-breeds-l3",
    "fashion-mnist-wordnet-l2",
    "fashion-mnist-wordnet-l3",
    "cifar-100-superclass-l2",
    "emoji-unicode-l3",
}


def names(tree, node_ids):
    return {tree.node(n).name for n in node_ids}


@pytest.mark.parametrize("levels", [3, 4])
def test_wordnet_groups_sharks_and_domestic_cats_tightly(levels):
    tree = shipped_tree(f"imagenet-1k-wordnet-l{levels}")
    sharks = tree.leaves(tree.lowest_common_ancestor(SHARKS))
    assert len(sharks) < 20
    assert not {"tench", "goldfish"} & names(tree, sharks)
    cats = tree.leaves(tree.lowest_common_ancestor(DOMESTIC_CATS))
    assert len(cats) < 20
    dogs = tree.classes[151:269]  # ImageNet-1k's dog breeds, Chihuahua to Mexican hairless
    assert tree.node(dogs[0]).name == "Chihuahua" and tree.node(dogs[-1]).name == "Mexican hairless"
    assert not set(dogs) & set(cats)


def test_every_shipped_tree_validates_and_holds_each_class_once():
    assert set(shipped_tree_names()) >= EXPECTED_SHIPPED
    imagenet = [e.id for e in imagenet_classes()]
    for tree_name in shipped_tree_names():
        tree = shipped_tree(tree_name)
        assert tree.leaves(tree.root) == tree.classes
        assert len(set(tree.classes)) == len(tree.classes)
        if tree_name.startswith("imagenet-1k"):
            assert tree.classes == imagenet
        assert tree.name == tree_name
    assert shipped_tree("fashion-mnist-wordnet-l2").classes == [e.id for e in FASHION_MNIST]
    assert shipped_tree("cifar-100-superclass-l2").classes == [e.id for e in cifar100_classes()]


def test_credits_ship_beside_the_reference_data():
    readme = (taxonomies_dir() / "README.md").read_text()
    assert "s-kumano/imagenet-superclass" in readme and "BREEDS" in readme
    assert (taxonomies_dir() / "sources" / "imagenet-superclass" / "LICENSE").is_file()


@pytest.mark.parametrize(
    "tree_name, source, classes, levels",
    [
        ("imagenet-1k-wordnet-l3", "wordnet", "imagenet-1k", 3),
        ("imagenet-1k-wordnet-l2", "wordnet", "imagenet-1k", 2),
        ("imagenet-1k-breeds-l3", "breeds", "imagenet-1k", 3),
        ("imagenet-1k-superclass-l2", "superclass", "imagenet-1k", 2),
        ("fashion-mnist-wordnet-l3", "wordnet", "fashion-mnist", 3),
        ("cifar-100-superclass-l2", "superclass", "cifar-100", 2),
    ],
)
def test_shipped_trees_are_reproduced_by_a_fresh_build(tree_name, source, classes, levels):
    fresh = build_tree(source, load_class_list(classes), levels=levels, name=tree_name).to_dict()
    shipped = json.loads((taxonomies_dir() / f"{tree_name}.json").read_text())
    fresh["source"].pop("tool"), shipped["source"].pop("tool")
    assert fresh == shipped


def test_fashion_mnist_wordnet_tree_groups_footwear_and_garments():
    tree = shipped_tree("fashion-mnist-wordnet-l2")
    footwear = tree.lowest_common_ancestor(["sandal", "sneaker", "ankle boot"])
    assert tree.node(footwear).name == "footwear"
    assert tree.leaves(footwear) == ["sandal", "sneaker", "ankle-boot"]
    assert tree.parent("shirt") == tree.parent("coat")


def test_cifar100_superclasses_are_the_official_twenty():
    tree = shipped_tree("cifar-100-superclass-l2")
    assert len(tree.level(1)) == 20
    assert tree.leaves("large_carnivores") == ["bear", "leopard", "lion", "tiger", "wolf"]


def test_superclass_and_breeds_work_on_subsets():
    subset = [e for e in imagenet_classes() if e.name in {"tabby", "Persian cat", "beagle", "hammerhead"}]
    tree = build_tree("superclass", subset)
    assert tree.classes == [e.id for e in subset]
    assert tree.lowest_common_ancestor(["tabby", "Persian cat"]) != tree.root
    breeds = build_tree("breeds", subset, levels=2)
    assert breeds.levels == 2 and breeds.num_classes == 4
    with pytest.raises(NhlError, match="ImageNet-1k"):
        build_tree("breeds", FASHION_MNIST)


def test_breeds_places_the_classes_it_leaves_out_by_wordnet():
    tree = shipped_tree("imagenet-1k-breeds-l3")
    placed = tree.source["params"]["placed_by_wordnet"]
    assert "n01871265" in placed  # tusker: not in BREEDS' hierarchy
    path_names = [tree.node(n).name for n in tree.path("n01871265")]
    assert "tusker" in path_names[-1]


def test_wordnet_build_from_names_and_folders(tmp_path):
    listing = tmp_path / "classes.txt"
    listing.write_text("# my classes\nsandal.n.01\tSandal\nn03472535\tSneaker\tgym shoe\nboot.n.01\n\n")
    entries = load_class_list(listing)
    assert [e.id for e in entries] == ["sandal.n.01", "n03472535", "boot.n.01"]
    tree = build_tree("wordnet", entries, levels=2)
    assert tree.node(tree.lowest_common_ancestor(tree.classes)).name == "footwear"
    for folder in ("n01440764", "n01443537", "n01484850"):
        (tmp_path / "data" / "train" / folder).mkdir(parents=True)
    folder_entries = load_class_list(tmp_path / "data")
    assert [e.name for e in folder_entries] == ["tench", "goldfish", "great white shark"]


def test_unknown_wordnet_names_say_how_to_fix():
    from nhlcli.taxonomy.classes import ClassEntry

    with pytest.raises(NhlError, match="WordNet has no noun for 1 class.*`source` hybrid"):
        build_tree("wordnet", [ClassEntry("zorblax", "zorblax"), *FASHION_MNIST[:3]], levels=2)


def test_group_counts_default_and_validation():
    assert default_group_counts(1000, 3) == [10, 100]
    assert default_group_counts(1000, 1) == []
    assert check_group_counts([5, 50], 1000, 3) == [5, 50]
    for bad in ([5], [50, 5], [0, 10], [5, 5000]):
        with pytest.raises(NhlError, match="groups") as error:
            check_group_counts(bad, 1000, 3)
        assert error.value.option == "groups"  # the CLI spells it --groups


def test_group_counts_steer_the_wordnet_build():
    entries = list(imagenet_classes())
    coarse = build_tree("wordnet", entries, levels=2, groups=[8])
    fine = build_tree("wordnet", entries, levels=2, groups=[60])
    assert len(coarse.level(1)) < len(fine.level(1))
    assert coarse.stats()["per_level"][0]["classes_per_node_mean"] > 40


def test_setup_wordnet_lays_out_nltk_files(tmp_path):
    from nhlcli.taxonomy.wordnet import lexnames_text, setup_wordnet

    source = tmp_path / "dict"
    source.mkdir()
    for name in ("data.noun", "index.noun", "noun.exc", "index.sense"):
        (source / name).write_text("x")
    dest = setup_wordnet(source, tmp_path / "nltk_data")
    assert dest == tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert (dest / "data.noun").is_file()
    lines = (dest / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    assert lines[5] == "05\tnoun.animal\t1" and lexnames_text().count("\n") == 45
    with pytest.raises(NhlError, match="not a WordNet 3.0 dict directory"):
        setup_wordnet(tmp_path / "empty", tmp_path / "x")


def test_missing_wordnet_gives_both_routes(monkeypatch):
    import nltk

    from nhlcli.taxonomy import wordnet

    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    wordnet.wordnet_reader.cache_clear()
    try:
        with pytest.raises(NhlError) as info:
            wordnet.wordnet_reader()
    finally:
        wordnet.wordnet_reader.cache_clear()
    assert "python -m nltk.downloader wordnet" in str(info.value)
    assert "nhl hierarchy setup-wordnet" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "sandal.n.01\tSandal\tslipper\tfootwear\n",
            r"classes.txt, line 1: 4 tab-separated columns.*at most 3",
        ),
        ("sandal.n.01\n\n# c\nboot.n.01\tBoot\t\t\tx\n", r"classes.txt, line 4: 5 tab-separated columns"),
        ("\tSandal\n", r"classes.txt, line 1: the class id \(first column\) is empty"),
    ],
)
def test_class_file_lines_with_extra_or_missing_columns_are_refused(tmp_path, text, message):
    listing = tmp_path / "classes.txt"
    listing.write_text(text)
    with pytest.raises(NhlError, match=message):
        load_class_list(listing)


def test_class_lists_empty_at_file_and_json_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat").mkdir()  # an empty spec used to read the current folder's class folders
    for empty in ("", "  "):
        with pytest.raises(NhlError, match="classes is empty"):
            load_class_list(empty)
    listing = tmp_path / "classes.txt"
    listing.write_text("sandal.n.01\tSandal\tslipper\n")
    (entry,) = load_class_list(f"@{listing}")
    assert (entry.id, entry.name, entry.aliases) == ("sandal.n.01", "Sandal", ("slipper",))
    keyed = tmp_path / "classes.json"
    keyed.write_text(json.dumps([{"id": "sandal.n.01", "label": "Sandal"}]))
    with pytest.raises(NhlError, match=r"item 0 has unknown key 'label'; a class object has 'id', 'name'"):
        load_class_list(keyed)
    keyed.write_text(json.dumps([{"id": "sandal.n.01", "aliases": "slipper"}]))
    with pytest.raises(NhlError, match="'aliases' must be a list of strings"):
        load_class_list(keyed)


def test_group_and_level_counts_read_in_the_singular():
    with pytest.raises(NhlError, match="gives 1 count but 3 levels need 2"):
        check_group_counts([4], 1000, 3)
    with pytest.raises(NhlError, match="gives 2 counts but 2 levels need 1"):
        check_group_counts([4, 8], 1000, 2)
    with pytest.raises(NhlError, match=r"the flat source gives 1 level, not 2"):
        build_tree("flat", FASHION_MNIST, levels=2)


def test_setup_wordnet_checks_its_target_before_copying(tmp_path):
    from nhlcli.taxonomy.wordnet import setup_wordnet

    source = tmp_path / "data" / "corpora" / "wordnet"
    source.mkdir(parents=True)
    for name in ("data.noun", "index.noun", "noun.exc", "index.sense"):
        (source / name).write_text(name)
    a_file = tmp_path / "note.txt"
    a_file.write_text("x")
    cases = [
        (tmp_path / "data", "overlaps the `from` directory"),  # the copy would land on the source
        (source, "overlaps the `from` directory"),  # inside the source
        (a_file, "is a file, not a directory"),
        (a_file / "nltk_data", "is a file, not a directory"),
        ("/proc/nltk_data", "cannot write"),
        ("", "to is empty"),
    ]
    for target, message in cases:
        with pytest.raises(NhlError, match=message):
            setup_wordnet(source, target)
    assert sorted(p.name for p in source.iterdir()) == ["data.noun", "index.noun", "index.sense", "noun.exc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "note.txt"]
