"""The hybrid source (paper 003's NHLgpt): WordNet first, the LLM only where WordNet cannot place a class.

Classes with a WordNet id or an unambiguous noun get their WordNet place; the rest (no noun, or a
name with several senses) go to the LLM in one request that assigns each to one of the WordNet
tree's innermost groups. The request is cached and checked like :mod:`nhlcli.taxonomy.llm`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import ClassEntry, flat_nested, leaf_node
from nhlcli.taxonomy.compress import check_group_counts, check_levels, compress_hierarchy
from nhlcli.taxonomy.labels import quoted
from nhlcli.taxonomy.llm import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    JsonObject,
    LabelMatcher,
    LLMSettings,
    ask_checked,
    build_llm_tree,
    class_labels,
    count_problems,
)
from nhlcli.taxonomy.tree import Tree, tool_stamp
from nhlcli.taxonomy.wordnet import hypernym_graph, place_classes, synset_id

EXAMPLES_PER_GROUP = 3


def _innermost(nested: dict[str, Any], levels: int) -> list[dict[str, Any]]:
    """The group nodes directly above the classes (depth ``levels - 1``), in tree order."""
    nodes = [nested]
    for _ in range(levels - 1):
        nodes = [kid for node in nodes for kid in node.get("children", [])]
    return nodes


def assignment_messages(
    groups: Sequence[dict[str, Any]], labels: Sequence[str], unplaced: Sequence[int]
) -> list[dict[str, str]]:
    """The request that puts each unplaced class into one of the existing innermost groups."""
    lines = []
    for group in groups:
        examples = [kid["name"] for kid in group["children"][:EXAMPLES_PER_GROUP]]
        more = len(group["children"]) - len(examples)
        shown = ", ".join(examples) + (f", and {more} more" if more > 0 else "")
        lines.append(f"{group['id']}: {group['name']} (e.g. {shown})")
    user = (
        "An image classifier's classes are grouped into the groups below (id: name, with example "
        "members). Assign each of the new classes to the one group it fits best.\n"
        "Rules:\n"
        "- Assign every new class exactly once, spelled exactly as listed.\n"
        "- Use only the group ids listed; do not invent groups or classes.\n"
        'Answer with JSON only, shaped like this:\n{"assignments": {"<new class>": "<group id>", ...}}\n'
        "Groups:\n" + "\n".join(lines) + "\n"
        "New classes:\n" + "\n".join(labels[i] for i in unplaced)
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def assignment_problems(
    data: Any, matcher: LabelMatcher, unplaced: Sequence[int], group_ids: Sequence[str]
) -> tuple[dict[int, str], list[str]]:
    """The class-to-group map of an answer and its problems (empty when the answer is valid)."""
    if not isinstance(data, dict) or not isinstance(data.get("assignments"), dict):
        return {}, ['the answer must be a JSON object {"assignments": {"<class>": "<group id>", ...}}']
    assignments = data["assignments"]
    repeated = assignments.repeated if isinstance(assignments, JsonObject) else {}
    mentions = [name for name in assignments for _ in range(repeated.get(name, 1))]
    problems, _ = count_problems(matcher, mentions, unplaced, "one of the new classes")
    known = set(group_ids)
    out: dict[int, str] = {}
    for name, group in assignments.items():
        idx = matcher.find(name)
        if idx is None or idx not in unplaced:
            continue
        if not isinstance(group, str) or group not in known:
            problems.append(
                f"class {matcher.labels[idx]!r} is assigned to {quoted(group)}, "
                "which is not one of the group ids"
            )
        else:
            out[idx] = group
    return out, problems


def build_hybrid_tree(
    entries: Sequence[ClassEntry],
    levels: int,
    settings: LLMSettings,
    groups: Sequence[int] | None = None,
    name: str = "",
) -> Tree:
    """A WordNet tree of ``levels`` levels in which an LLM places the classes WordNet cannot.

    No request is made (and no API key needed) when WordNet places every class; when it places
    none, the whole grouping comes from :func:`build_llm_tree`.
    """
    check_levels(levels)
    if not entries:
        raise NhlError("no classes to group; give a class list with at least one class")
    ids = [e.id for e in entries]

    def source(counts: list[int] | None, llm_placed: list[str]) -> dict[str, Any]:
        params = {
            "levels": levels,
            "groups": counts,
            "model": settings.model,
            "prompt_version": PROMPT_VERSION,
            "wordnet": "3.0",
            "llm_placed": llm_placed,
        }
        return {"kind": "hybrid", "params": params, "tool": tool_stamp()}

    if levels == 1:
        return Tree.from_nested(flat_nested(entries), ids, name=name, source=source(None, []))
    placements = place_classes(entries)
    unplaced = [
        i for i, e in enumerate(entries) if placements[e.id].synset is None or placements[e.id].ambiguous
    ]
    unplaced_set = set(unplaced)
    placed = [e for i, e in enumerate(entries) if i not in unplaced_set]
    if not placed:
        tree = build_llm_tree(entries, levels, settings, name=name)
        return Tree.from_dict({**tree.to_dict(), "source": source(None, ids)})
    graph, root = hypernym_graph([placements[e.id].synset for e in placed])
    concept_of = {e.id: synset_id(placements[e.id].synset) for e in placed}
    counts = check_group_counts(groups, len(placed), levels)
    nested = compress_hierarchy(graph, root, placed, concept_of, levels, counts)
    if unplaced:
        inner = _innermost(nested, levels)
        labels = class_labels(entries)
        matcher = LabelMatcher(labels)
        group_ids = [g["id"] for g in inner]

        def check(data: Any) -> tuple[Any, list[str]]:
            assigned, problems = assignment_problems(data, matcher, unplaced, group_ids)
            return (None, problems) if problems else (assigned, [])

        messages = assignment_messages(inner, labels, unplaced)
        assigned, _ = ask_checked(settings, messages, check, "assignment")
        by_id = {g["id"]: g for g in inner}
        for idx in unplaced:
            by_id[assigned[idx]]["children"].append(leaf_node(entries[idx]))
    return Tree.from_nested(nested, ids, name=name, source=source(counts, [ids[i] for i in unplaced]))
