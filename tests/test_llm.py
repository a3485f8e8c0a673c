"""LLM and hybrid tree sources, through the real openai client against a scripted local server."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line_error, run_nhl

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import FASHION_MNIST, ClassEntry
from nhlcli.taxonomy.hybrid import build_hybrid_tree
from nhlcli.taxonomy.llm import CACHE_FORMAT, LLMSettings, build_llm_tree
from nhlcli.taxonomy.sources import build_wordnet_tree
from nhlcli.taxonomy.tree import Tree

try:  # tests/ is on sys.path while it is not a package
    from llm_server import ScriptedLLMServer
except ImportError:  # pragma: no cover - tests/ turned into a package
    from tests.llm_server import ScriptedLLMServer

SECRET = "sk-test-SECRET-0123456789abcdef"
IDS = [e.id for e in FASHION_MNIST]

TOPS = ["T-shirt/top", "Pullover", "Shirt", "Coat"]
BOTTOMS = ["Trouser", "Dress"]
SHOES = ["Sandal", "Sneaker"]
BOOTS = ["Ankle boot"]
BAGS = ["Bag"]


def grouping(levels: int, drop: str | None = None, extra: str | None = None, twice: str | None = None) -> str:
    """A good answer for Fashion-MNIST, optionally spoiled: a class dropped, invented or repeated."""

    def names(xs: list[str]) -> list[str]:
        return [x for x in xs if x != drop]

    shoes = names(SHOES) + ([extra] if extra else []) + ([twice] if twice else [])
    if levels == 2:
        groups: list[dict[str, Any]] = [
            {"name": "Tops", "classes": names(TOPS)},
            {"name": "Bottoms and dresses", "classes": names(BOTTOMS)},
            {"name": "Footwear", "classes": shoes + names(BOOTS)},
            {"name": "Accessories", "classes": names(BAGS)},
        ]
    else:
        groups = [
            {
                "name": "Clothing",
                "groups": [
                    {"name": "Tops", "classes": names(TOPS)},
                    {"name": "Bottoms and dresses", "classes": names(BOTTOMS)},
                ],
            },
            {
                "name": "Footwear",
                "groups": [{"name": "Shoes", "classes": shoes}, {"name": "Boots", "classes": names(BOOTS)}],
            },
            {"name": "Accessories", "groups": [{"name": "Bags", "classes": names(BAGS)}]},
        ]
    return json.dumps({"groups": groups})


PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def llm_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLMServer]:
    """A scripted OpenAI-compatible server on 127.0.0.1 (no proxy in the way), closed afterwards."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    with ScriptedLLMServer() as server:
        yield server


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return SECRET


def make_settings(server: Any, tmp_path: Path, **kw: Any) -> LLMSettings:
    defaults: dict[str, Any] = {
        "model": "test-model",
        "base_url": server.base_url,
        "cache": tmp_path / "llm-cache.json",
        "timeout": 10.0,
        "http_retries": 0,  # HTTP 429 and 5xx retries: tests/test_hostile_trees.py
    }
    defaults.update(kw)
    return LLMSettings(**defaults)


def last_user_message(request: dict[str, Any]) -> str:
    return request["messages"][-1]["content"]


def dead_url() -> str:
    """A local URL where nothing listens (a port that was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -------------------------------------------------------------------------------- good answers
@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("fenced", [False, True])
def test_good_answer_builds_tree(llm_server: Any, tmp_path: Path, levels: int, fenced: bool) -> None:
    answer = grouping(levels)
    llm_server.answer(f"Here you go:\n```json\n{answer}\n```" if fenced else answer)
    tree = build_llm_tree(FASHION_MNIST, levels, make_settings(llm_server, tmp_path), name="fm-llm")

    assert tree.levels == levels
    assert tree.classes == IDS
    footwear = tree.lowest_common_ancestor(["sandal", "sneaker", "ankle-boot"])
    assert tree.node(footwear).name == "Footwear" and footwear == "llm/footwear"
    assert tree.leaves(footwear) == ["sandal", "sneaker", "ankle-boot"]
    assert tree.node("ankle-boot").aliases == ("boot", "ankle boot")
    assert tree.node("ankle-boot").wnid == "n02872752"
    if levels == 3:
        assert tree.parent("sandal") == "llm/footwear/shoes"
        assert tree.node("llm/footwear/shoes").name == "Shoes"
    assert tree.source["kind"] == "llm"
    assert tree.source["params"]["levels"] == levels

    assert len(llm_server.requests) == 1
    request = llm_server.requests[0]
    assert request["model"] == "test-model" and request["temperature"] == 0
    prompt = last_user_message(request)
    assert all(e.name in prompt for e in FASHION_MNIST)
    assert llm_server.headers[0]["authorization"] == f"Bearer {SECRET}"

    saved = tree.save(tmp_path / "tree.json")
    assert Tree.load(saved) == tree


def test_levels_one_needs_no_llm(llm_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    tree = build_llm_tree(FASHION_MNIST, 1, make_settings(llm_server, tmp_path))
    assert tree.levels == 1 and tree.classes == IDS
    assert tree.children(tree.root) == IDS
    assert llm_server.requests == []


@pytest.mark.parametrize("levels", [0, 5])
def test_levels_out_of_range(llm_server: Any, tmp_path: Path, levels: int) -> None:
    with pytest.raises(NhlError, match="1 to 4 levels"):
        build_llm_tree(FASHION_MNIST, levels, make_settings(llm_server, tmp_path))
    assert llm_server.requests == []


# -------------------------------------------------------------------------------- corrections
@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (lambda lv: grouping(lv, drop="Sandal"), "class 'Sandal' is missing"),
        (lambda lv: grouping(lv, extra="Flip-flop"), "'Flip-flop' is not one of the classes"),
        (lambda lv: grouping(lv, twice="Coat"), "class 'Coat' appears 2 times"),
        (lambda lv: grouping(lv)[:-3], "not valid JSON"),
    ],
    ids=["missing", "invented", "repeated", "malformed"],
)
def test_invalid_answer_is_sent_back(
    llm_server: Any, tmp_path: Path, levels: int, bad: Any, problem: str
) -> None:
    first = bad(levels)
    llm_server.answer(first, grouping(levels))
    settings = make_settings(llm_server, tmp_path)
    tree = build_llm_tree(FASHION_MNIST, levels, settings)

    assert tree.classes == IDS and tree.levels == levels
    assert len(llm_server.requests) == 2
    retry = llm_server.messages[1]
    assert retry[:2] == llm_server.messages[0]  # the same conversation, continued
    assert retry[2] == {"role": "assistant", "content": first}
    assert retry[3]["role"] == "user" and problem in retry[3]["content"]
    cache = json.loads(settings.cache.read_text())
    (entry,) = cache["entries"].values()
    assert entry["attempts"] == 2 and entry["answer"] == grouping(levels)


def test_wrong_depth_is_sent_back(llm_server: Any, tmp_path: Path) -> None:
    nested = json.loads(grouping(3))
    nested["groups"][2] = {"name": "Accessories", "classes": ["Bag"]}  # classes one level too high
    llm_server.answer(json.dumps(nested), grouping(3))
    tree = build_llm_tree(FASHION_MNIST, 3, make_settings(llm_server, tmp_path))
    assert tree.levels == 3 and tree.classes == IDS
    assert "group 'Accessories' holds classes at depth 2 but classes belong at depth 3" in last_user_message(
        llm_server.requests[1]
    )


def test_all_attempts_bad_raises_and_caches_nothing(llm_server: Any, tmp_path: Path) -> None:
    settings = make_settings(llm_server, tmp_path, max_retries=2)
    llm_server.answer(grouping(2, drop="Bag"), "not json at all", grouping(2, extra="Sock"))
    with pytest.raises(NhlError, match=r"no valid grouping after 3 attempts: 'Sock' is not one of"):
        build_llm_tree(FASHION_MNIST, 2, settings)
    assert len(llm_server.requests) == 3
    assert not settings.cache.exists()


def test_duplicate_names_are_disambiguated(llm_server: Any, tmp_path: Path) -> None:
    entries = [
        ClassEntry("n02012849", "crane", "n02012849"),
        ClassEntry("n03126707", "crane", "n03126707"),
        ClassEntry("n01440764", "tench", "n01440764"),
    ]
    bare = {
        "groups": [
            {"name": "Birds", "classes": ["crane"]},
            {"name": "Machines", "classes": ["crane"]},
            {"name": "Fish", "classes": ["tench"]},
        ]
    }
    good = {
        "groups": [
            {"name": "Birds", "classes": ["crane [n02012849]"]},
            {"name": "Machines", "classes": ["crane [n03126707]"]},
            {"name": "Fish", "classes": ["tench"]},
        ]
    }
    llm_server.answer(json.dumps(bare), json.dumps(good))
    tree = build_llm_tree(entries, 2, make_settings(llm_server, tmp_path))
    assert "crane [n02012849]" in last_user_message(llm_server.requests[0])
    assert "'crane' is ambiguous" in last_user_message(llm_server.requests[1])
    assert tree.node(tree.parent("n02012849")).name == "Birds"
    assert tree.node(tree.parent("n03126707")).name == "Machines"


# -------------------------------------------------------------------------------- failures
def test_timeout(llm_server: Any, tmp_path: Path) -> None:
    llm_server.stall(5.0, grouping(2))
    with pytest.raises(NhlError, match=r"did not answer within 0.5 s; raise `timeout`"):
        build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path, timeout=0.5))
    assert not (tmp_path / "llm-cache.json").exists()


def test_missing_key(llm_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(NhlError, match="set OPENAI_API_KEY"):
        build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path))
    assert llm_server.requests == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "rejected the API key in OPENAI_API_KEY"),
        (500, "answered HTTP 500: overloaded"),
    ],
)
def test_http_errors(llm_server: Any, tmp_path: Path, status: int, expected: str) -> None:
    llm_server.fail(status, f"overloaded (key {SECRET})")
    with pytest.raises(NhlError, match=expected) as info:
        build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path))
    message = str(info.value)
    assert SECRET not in message and "\n" not in message


HTML_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n"
    "<body><h1>Welcome to nginx!</h1>" + "<p>filler</p>" * 200 + "</body>\n</html>\n"
)


@pytest.mark.parametrize(
    ("body", "content_type", "what"),
    [
        (HTML_PAGE, "text/html", "an HTML page titled 'Welcome to nginx!'"),
        ("{not json " + SECRET, "application/json", "a body that is not JSON: '{not json ***'"),
        ("[1, 2, 3]", "application/json", "a JSON list"),
        ('"hello"', "application/json", "a JSON string"),
        ("", "application/json", "an empty body"),
        ('{"status": "ok"}', "application/json", "a JSON object without 'choices'"),
        ('{"choices": ["hi"]}', "application/json", "a first choice without a 'message' object"),
        ('{"error": {"message": "quota used up"}}', "application/json", "an error: 'quota used up'"),
        ('{"choices": {"0": "hi"}}', "application/json", "'choices' that is a JSON object, not a list"),
        (
            '{"choices": [{"index": 0, "message": {"role": "assistant", "content": 5}}]}',
            "application/json",
            "a message whose 'content' is a JSON number, not text",
        ),
    ],
    ids=[
        "html",
        "garbage-json",
        "json-list",
        "json-string",
        "empty",
        "no-choices",
        "bad-choice",
        "error",
        "choices-object",
        "content-number",
    ],
)
def test_a_server_that_is_not_openai_compatible_is_named(
    llm_server: Any, tmp_path: Path, body: str, content_type: str, what: str
) -> None:
    llm_server.send_raw(body, content_type)
    settings = make_settings(llm_server, tmp_path)
    with pytest.raises(NhlError) as info:
        build_llm_tree(FASHION_MNIST, 2, settings)
    message = str(info.value)
    assert f"the LLM server at {llm_server.base_url} did not answer like an OpenAI-compatible" in message
    assert f"(it sent {what}" in message and "check `base_url`" in message
    assert "\n" not in message and len(message) < 400  # the page is named, not quoted
    assert SECRET not in message
    assert len(llm_server.requests) == 1  # not retried: the server, not the answer, is wrong
    assert not settings.cache.exists()


def test_a_server_that_is_not_openai_compatible_fails_the_cli_in_one_line(
    llm_server: Any, tmp_path: Path
) -> None:
    llm_server.send_raw(HTML_PAGE, "text/html")
    out = tmp_path / "tree.json"
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS} | {"OPENAI_API_KEY": SECRET}
    run = run_nhl(
        "hierarchy", "build", "--source", "llm", "--levels", "2", "--base-url", llm_server.base_url,
        "-o", out, "--cache", tmp_path / "cache.json", env=env,
    )  # fmt: skip
    assert_one_line_error(run, "not answer like an OpenAI-compatible", "HTML page", "--base-url")
    assert SECRET not in run.err
    assert not out.exists() and not (tmp_path / "cache.json").exists()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("The model `test-model` does not exist or you do not have access to it.", "model_not_found"),
        ("The model `test-model` does not exist.", None),  # vLLM
        ('model "test-model" not found, try pulling it first', None),  # Ollama
    ],
    ids=["openai", "vllm", "ollama"],
)
def test_an_unknown_model_is_reported_as_such(
    llm_server: Any, tmp_path: Path, message: str, code: Any
) -> None:
    llm_server.fail(404, message, code=code)
    with pytest.raises(NhlError, match=r"model 'test-model' was not found at .*`model`") as info:
        build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path))
    assert "test-model" in str(info.value).split("HTTP 404: ", 1)[1]


def test_a_base_url_without_v1_is_a_wrong_url_not_a_missing_model(llm_server: Any, tmp_path: Path) -> None:
    root = llm_server.root_url
    with pytest.raises(NhlError) as info:
        build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path, base_url=root))
    message = str(info.value)
    assert f"has no chat completions API at {root}/chat/completions" in message
    assert "HTTP 404: Not Found" in message and f"try `base_url` {root}/v1" in message
    assert "was not found" not in message and "--model" not in message
    assert llm_server.requests == []  # the right path was never reached


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("404 page not found", "text/plain"), ("<html><title>404 Not Found</title></html>", "text/html")],
)
def test_a_plain_404_at_v1_is_a_wrong_url(
    llm_server: Any, tmp_path: Path, body: str, content_type: str
) -> None:
    llm_server.send_raw(body, content_type, status=404)
    with pytest.raises(NhlError) as info:
        build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path))
    message = str(info.value)
    assert f"has no chat completions API at {llm_server.base_url}/chat/completions" in message
    assert "check `base_url`" in message and "try `base_url`" not in message  # it has /v1 already
    assert "was not found" not in message and "<html>" not in message


def test_an_empty_answer_is_sent_back(llm_server: Any, tmp_path: Path) -> None:
    llm_server.answer(None, grouping(2))  # "content": null: a broken answer, not a broken server
    tree = build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path))
    assert tree.classes == IDS and len(llm_server.requests) == 2
    assert "the answer was empty" in last_user_message(llm_server.requests[1])


def test_an_answer_in_content_parts_is_read(llm_server: Any, tmp_path: Path) -> None:
    answer = grouping(2)
    parts = [{"type": "text", "text": answer[:40]}, {"type": "text", "text": answer[40:]}]
    body = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": parts}}],
    }
    llm_server.send_raw(json.dumps(body))
    tree = build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path))
    assert tree.classes == IDS and len(llm_server.requests) == 1


def test_unreachable_server(tmp_path: Path, llm_server: Any) -> None:
    url = dead_url()
    with pytest.raises(NhlError, match=f"could not reach the LLM server at {url}"):
        build_llm_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path, base_url=url))


# -------------------------------------------------------------------------------- cache
def test_cache_round_trip_is_offline_and_byte_identical(
    llm_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(llm_server, tmp_path)
    llm_server.answer(grouping(3))
    first = build_llm_tree(FASHION_MNIST, 3, settings, name="fm")
    first_bytes = first.save(tmp_path / "a.json").read_bytes()

    cache_text = settings.cache.read_text()
    cache = json.loads(cache_text)
    assert cache["format"] == CACHE_FORMAT and cache["version"] == 1
    (entry,) = cache["entries"].values()
    assert entry["model"] == "test-model" and entry["attempts"] == 1
    assert entry["answer"] == grouping(3) and entry["messages"] == llm_server.messages[0]
    assert SECRET not in cache_text and SECRET not in first_bytes.decode()

    monkeypatch.delenv("OPENAI_API_KEY")  # a warm cache needs no key and no server
    offline = make_settings(llm_server, tmp_path, base_url=dead_url())
    second = build_llm_tree(FASHION_MNIST, 3, offline, name="fm")
    assert second.save(tmp_path / "b.json").read_bytes() == first_bytes
    assert len(llm_server.requests) == 1
    assert settings.cache.read_text() == cache_text


def test_cache_keeps_answers_per_request(llm_server: Any, tmp_path: Path) -> None:
    settings = make_settings(llm_server, tmp_path)
    llm_server.answer(grouping(2), grouping(3))
    build_llm_tree(FASHION_MNIST, 2, settings)
    build_llm_tree(FASHION_MNIST, 3, settings)
    build_llm_tree(FASHION_MNIST, 2, settings)  # from the cache
    assert len(llm_server.requests) == 2
    assert len(json.loads(settings.cache.read_text())["entries"]) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format": "other"}', "is not an nhl LLM cache"),
        ('{"format": "nhl-llm-cache", "version": "one", "entries": {}}', "invalid 'version' 'one'"),
        ('{"format": "nhl-llm-cache", "version": 0, "entries": {}}', "invalid 'version' 0"),
        ('{"format": "nhl-llm-cache", "entries": {}}', "has no 'version'"),
        ('{"format": "nhl-llm-cache", "version": 7, "entries": {}}', "version 7, newer than this nhl"),
    ],
)
def test_bad_cache_file(llm_server: Any, tmp_path: Path, content: str, expected: str) -> None:
    settings = make_settings(llm_server, tmp_path)
    settings.cache.write_text(content)
    with pytest.raises(NhlError, match=expected) as info:
        build_llm_tree(FASHION_MNIST, 2, settings)
    assert str(settings.cache) in str(info.value)
    assert ("upgrade" in str(info.value)) == ("newer" in expected)  # only a newer file asks for an upgrade
    assert llm_server.requests == []


def test_edited_cache_answer_is_checked(llm_server: Any, tmp_path: Path) -> None:
    settings = make_settings(llm_server, tmp_path)
    llm_server.answer(grouping(2))
    build_llm_tree(FASHION_MNIST, 2, settings)
    cache = json.loads(settings.cache.read_text())
    (entry,) = cache["entries"].values()
    entry["answer"] = grouping(2, drop="Coat")  # a person edits the cached answer by hand
    settings.cache.write_text(json.dumps(cache))
    with pytest.raises(NhlError, match=r"class 'Coat' is missing.*delete entry"):
        build_llm_tree(FASHION_MNIST, 2, settings)
    assert len(llm_server.requests) == 1


# -------------------------------------------------------------------------------- hybrid
ZORBLAX = ClassEntry("flip-flop-x", "zorblax")  # WordNet has no such noun
CRANE = ClassEntry("mystery-crane", "crane")  # WordNet has several senses


@pytest.mark.parametrize("levels", [2, 3])
def test_hybrid_llm_places_what_wordnet_cannot(
    llm_server: Any, tmp_path: Path, levels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [*FASHION_MNIST[:3], ZORBLAX, *FASHION_MNIST[3:], CRANE]
    wordnet = build_wordnet_tree(FASHION_MNIST, levels)
    shoe_group, bag_group = wordnet.parent("sandal"), wordnet.parent("bag")
    bad = {"assignments": {"zorblax": "no-such-group"}}
    good = {"assignments": {"zorblax": shoe_group, "crane": bag_group}}
    llm_server.answer(json.dumps(bad), json.dumps(good))
    settings = make_settings(llm_server, tmp_path)
    tree = build_hybrid_tree(entries, levels, settings)

    assert tree.levels == levels
    assert tree.classes == [e.id for e in entries]
    assert tree.parent("flip-flop-x") == shoe_group
    assert tree.parent("mystery-crane") == bag_group
    assert tree.parent("sneaker") == wordnet.parent("sneaker")  # WordNet's places are kept
    assert tree.source["kind"] == "hybrid"
    assert tree.source["params"]["llm_placed"] == ["flip-flop-x", "mystery-crane"]

    prompt = last_user_message(llm_server.requests[0])
    new_classes = prompt.split("New classes:\n", 1)[1].splitlines()
    assert new_classes == ["zorblax", "crane"]
    assert f"{shoe_group}: " in prompt and f"{bag_group}: " in prompt
    problems = last_user_message(llm_server.requests[1])
    assert "class 'crane' is missing" in problems
    assert "class 'zorblax' is assigned to 'no-such-group', which is not one of the group ids" in problems

    monkeypatch.delenv("OPENAI_API_KEY")  # the rebuild comes from the cache
    again = build_hybrid_tree(entries, levels, settings)
    assert again == tree and len(llm_server.requests) == 2


def test_hybrid_rejects_placed_and_invented_classes(llm_server: Any, tmp_path: Path) -> None:
    entries = [*FASHION_MNIST, ZORBLAX]
    group = build_wordnet_tree(FASHION_MNIST, 2).parent("sandal")
    llm_server.answer(
        json.dumps({"assignments": {"zorblax": group, "Sandal": group, "Sock": group}}),
        json.dumps({"assignments": {"zorblax": group}}),
    )
    tree = build_hybrid_tree(entries, 2, make_settings(llm_server, tmp_path))
    problems = last_user_message(llm_server.requests[1])
    assert "'Sandal' is not one of the new classes" in problems
    assert "'Sock' is not one of the new classes" in problems
    assert tree.parent("flip-flop-x") == group


def test_hybrid_all_placed_makes_no_request(
    llm_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    tree = build_hybrid_tree(FASHION_MNIST, 2, make_settings(llm_server, tmp_path))
    assert llm_server.requests == []
    assert tree.to_dict()["tree"] == build_wordnet_tree(FASHION_MNIST, 2).to_dict()["tree"]
    assert tree.source["params"]["llm_placed"] == []
    assert not (tmp_path / "llm-cache.json").exists()


def test_hybrid_none_placed_falls_back_to_llm_grouping(llm_server: Any, tmp_path: Path) -> None:
    entries = [ZORBLAX, ClassEntry("glorp", "glorpfish"), ClassEntry("quux", "quuxbeast")]
    answer = {
        "groups": [
            {"name": "Made up", "classes": ["zorblax"]},
            {"name": "Creatures", "classes": ["glorpfish", "quuxbeast"]},
        ]
    }
    llm_server.answer(json.dumps(answer))
    tree = build_hybrid_tree(entries, 2, make_settings(llm_server, tmp_path))
    assert tree.classes == ["flip-flop-x", "glorp", "quux"]
    assert tree.node(tree.parent("glorp")).name == "Creatures"
    assert tree.source["kind"] == "hybrid"
    assert tree.source["params"]["llm_placed"] == ["flip-flop-x", "glorp", "quux"]
    assert len(llm_server.requests) == 1
