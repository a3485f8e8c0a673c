"""Hostile trees, class lists and LLM answers: each is refused in one line or read correctly.

The matrix of issue 34 for the taxonomy: deeply nested JSON (tree files, LLM answers, LLM
caches), terminal escapes in names (tree files, class lists, LLM answers), byte-order marks and
CRLF line ends, HTTP 429 and 5xx from an LLM server, and nltk's warnings. Each case runs through
the library and, where a command reads the input, through ``nhl`` as a user would. Add new cases
to the tables below.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line_error, run_nhl

from nhlcli.errors import NhlError
from nhlcli.taxonomy.classes import FASHION_MNIST, load_class_list
from nhlcli.taxonomy.llm import LLMSettings, build_llm_tree, retry_after
from nhlcli.taxonomy.tree import Tree

try:  # tests/ is on sys.path while it is not a package
    from llm_server import ScriptedLLMServer
except ImportError:  # pragma: no cover - tests/ turned into a package
    from tests.llm_server import ScriptedLLMServer

ESC = "\x1b"
DEEP = "[" * 100_000 + "]" * 100_000
SECRET = "sk-test-SECRET-hostile"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def tree_dict(**changes: Any) -> dict[str, Any]:
    """A valid two-class tree file's object, with top-level keys replaced by ``changes``."""
    data: dict[str, Any] = {
        "format": "nhl-tree",
        "version": 1,
        "name": "toy",
        "levels": 1,
        "classes": ["car", "truck"],
        "tree": {"id": "root", "name": "all", "children": [{"id": "car", "name": "Car"}, {"id": "truck"}]},
    }
    data.update(changes)
    return data


def with_first_leaf(**fields: Any) -> dict[str, Any]:
    """The toy tree with the fields of its first leaf (class ``car``) replaced."""
    data = tree_dict()
    data["tree"]["children"][0].update(fields)
    return data


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode("utf-8")


# ------------------------------------------------------------------------------------ tree files
BAD_TREES = {
    "deep-json": (DEEP.encode(), "nested 100000 levels deep"),
    "a-list": (b"[1, 2]", "must hold a JSON object"),
    "a-number": (b"42", "must hold a JSON object"),
    "a-huge-integer": (b'{"format": "nhl-tree", "version": ' + b"9" * 5000 + b"}", "cannot be read as JSON"),
    "invalid-utf8": (b'{"format": "nhl-tree\xff"}', "not UTF-8"),
    "nul-bytes": (b'{"format": "nhl\x00-tree"}', "not valid JSON"),
    "esc-in-name": (with_first_leaf(name=f"{ESC}[31mRED{ESC}[0m"), r"'name' '\x1b[31mRED\x1b[0m' holds"),
    "esc-in-id": (
        tree_dict(
            classes=[f"car{ESC}]0;pwned", "truck"],
            tree={"id": "root", "children": [{"id": f"car{ESC}]0;pwned"}, {"id": "truck"}]},
        ),
        r"'car\x1b]0;pwned' holds the control character \x1b",
    ),
    "esc-in-nodes-form": (
        {
            **{k: v for k, v in tree_dict().items() if k != "tree"},
            "nodes": [
                {"id": "root"},
                {"id": "car", "parent": "root", "name": f"{ESC}[2J"},
                {"id": "truck", "parent": "root"},
            ],
        },
        r"node 'car': 'name' '\x1b[2J' holds",
    ),
    "esc-in-tree-name": (tree_dict(name=f"{ESC}[2Jtoy"), r"'\x1b[2Jtoy' holds"),
    "c1-in-alias": (with_first_leaf(aliases=["\x9b31m"]), r"alias '\x9b31m' holds"),
    "bidi-override-in-name": (
        with_first_leaf(name="evil\u202etxt.exe"),
        r"'evil\u202etxt.exe' holds the bidirectional control U+202E",
    ),
    "esc-in-source": (tree_dict(source={"kind": f"{ESC}[5m"}), r"'\x1b[5m' holds"),
    "name-of-100000-chars": (with_first_leaf(name="x" * 100_000), "is 100,000 characters long"),
    "duplicate-ids": (
        tree_dict(tree={"id": "root", "children": [{"id": "car"}, {"id": "car"}, {"id": "truck"}]}),
        "duplicate class 'car'",
    ),
    "non-string-id": (with_first_leaf(id=5), "'id' must be a non-empty string (got 5)"),
    "non-string-name": (with_first_leaf(name={"a": 1}), "'name' must be a non-empty string"),
    "non-string-wnid": (with_first_leaf(wnid=["n1"]), "'wnid' must be a non-empty string"),
    "non-string-class": (tree_dict(classes=["car", 7]), "'classes' must be a non-empty list"),
    "source-a-list": (tree_dict(source=[1, 2]), "'source' must be a JSON object"),
}


@pytest.mark.parametrize(("content", "fragment"), BAD_TREES.values(), ids=BAD_TREES.keys())
def test_bad_tree_file_is_refused_in_one_line(tmp_path: Path, content: Any, fragment: str) -> None:
    path = tmp_path / "tree.json"
    path.write_bytes(as_bytes(content))
    with pytest.raises(NhlError) as info:
        Tree.load(path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and ESC not in message and "\x9b" not in message
    assert len(message) < 600  # a 100,000-character name is quoted, not copied


@pytest.mark.parametrize("command", ["validate", "show", "stats"])
@pytest.mark.parametrize(
    "case", ["deep-json", "esc-in-name", "esc-in-id", "esc-in-tree-name", "name-of-100000-chars", "a-list"]
)
def test_bad_tree_file_fails_the_cli_in_one_line(tmp_path: Path, command: str, case: str) -> None:
    content, fragment = BAD_TREES[case]
    path = tmp_path / "tree.json"
    path.write_bytes(as_bytes(content))
    run = run_nhl("hierarchy", command, path)
    assert_one_line_error(run, fragment)
    assert ESC not in run.err + run.out  # the terminal gets no raw escape sequence


def test_tree_file_with_bom_loads(tmp_path: Path) -> None:
    path = tmp_path / "tree.json"
    path.write_bytes(b"\xef\xbb\xbf" + as_bytes(tree_dict()))
    assert Tree.load(path).classes == ["car", "truck"]
    run = run_nhl("hierarchy", "validate", path)
    assert run.code == 0, run.err


def test_a_tree_name_with_escapes_cannot_be_set() -> None:
    tree = Tree.from_dict(tree_dict())
    with pytest.raises(NhlError, match=r"'\\x1b\[2J' holds the control character"):
        tree.name = f"{ESC}[2J"


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_picture_of_names_the_font_lacks_prints_no_warning(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "tree.json"
    path.write_bytes(as_bytes(with_first_leaf(name="猫 кошка " + "y" * 900)))
    out = tmp_path / f"tree.{fmt}"
    # a terminal wide enough for a long temporary path: rich wraps longer lines, also inside a word
    run = run_nhl("hierarchy", "show", path, "-f", fmt, "-o", out, env={**os.environ, "COLUMNS": "1000"})
    assert run.code == 0 and run.err == "", run.err  # no matplotlib "Glyph missing" or layout warning
    assert run.out.startswith(f"wrote {out}") and out.stat().st_size > 0


# ------------------------------------------------------------------------------------ class lists
GOOD_CLASS_FILES = {
    "bom-crlf-text": ("classes.txt", b"\xef\xbb\xbfcar\r\ntruck\r\n"),
    "bom-json": ("classes.json", b'\xef\xbb\xbf["car", "truck"]'),
    "crlf-tab-columns": ("classes.txt", b"car\tCar\r\ntruck\tTruck\tlorry\r\n"),
}


@pytest.mark.parametrize(("name", "content"), GOOD_CLASS_FILES.values(), ids=GOOD_CLASS_FILES.keys())
def test_bom_and_crlf_leave_class_ids_right(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert [e.id for e in load_class_list(path)] == ["car", "truck"]
    out = tmp_path / "tree.json"
    run = run_nhl("hierarchy", "build", "--source", "flat", "--classes", path, "-o", out)
    assert run.code == 0, run.err
    assert json.loads(out.read_text())["classes"] == ["car", "truck"]


BAD_CLASS_FILES = {
    "nul-bytes": ("classes.txt", b"car\x00\ntruck\n", "holds NUL bytes"),
    "invalid-utf8": ("classes.txt", b"car\xff\ntruck\n", "is not a UTF-8 text file"),
    "esc-in-id": ("classes.txt", b"car\x1b[31m\ntruck\n", r"line 1: class id 'car\x1b[31m' holds"),
    "esc-in-name": ("classes.txt", b"car\tC\x1b[2Jar\ntruck\n", r"line 1: name 'C\x1b[2Jar' holds"),
    "esc-in-json": ("classes.json", b'["car", "tr\\u001buck"]', r"item 1: class id 'tr\x1buck' holds"),
    "deep-json": ("classes.json", DEEP.encode(), "nested 100000 levels deep"),
}


@pytest.mark.parametrize(
    ("name", "content", "fragment"), BAD_CLASS_FILES.values(), ids=BAD_CLASS_FILES.keys()
)
def test_bad_class_file_is_refused_in_one_line(
    tmp_path: Path, name: str, content: bytes, fragment: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(NhlError) as info:
        load_class_list(path)
    assert fragment in str(info.value) and ESC not in str(info.value)
    out = tmp_path / "tree.json"
    run = run_nhl("hierarchy", "build", "--source", "flat", "--classes", path, "-o", out)
    assert_one_line_error(run, fragment)
    assert ESC not in run.err and not out.exists()


def test_class_folder_with_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "car").mkdir(parents=True)
    (tmp_path / "data" / f"tr{ESC}uck").mkdir()
    with pytest.raises(NhlError, match=r"class id 'tr\\x1buck' holds the control character"):
        load_class_list(tmp_path / "data")


# ------------------------------------------------------------------------------------ LLM answers
GOOD = json.dumps(
    {
        "groups": [
            {"name": "Tops", "classes": ["T-shirt/top", "Pullover", "Shirt", "Coat"]},
            {"name": "Bottoms and dresses", "classes": ["Trouser", "Dress"]},
            {"name": "Footwear", "classes": ["Sandal", "Sneaker", "Ankle boot"]},
            {"name": "Accessories", "classes": ["Bag"]},
        ]
    }
)
ESCAPED_GROUP = GOOD.replace('"Tops"', json.dumps(f"{ESC}[31mTops{ESC}[0m"))
LONG_GROUP = GOOD.replace('"Tops"', json.dumps("T" * 100_000))


@pytest.fixture
def llm_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLMServer]:
    """A scripted OpenAI-compatible server on 127.0.0.1 (no proxy in the way), and an API key."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with ScriptedLLMServer() as server:
        yield server


def settings_for(server: ScriptedLLMServer, tmp_path: Path, **changes: Any) -> LLMSettings:
    """Settings for the scripted server; retries back off for 0 s so that tests never sleep."""
    values: dict[str, Any] = {
        "model": "test-model",
        "base_url": server.base_url,
        "cache": tmp_path / "cache.json",
        "timeout": 10.0,
        "backoff": 0.0,
    }
    values.update(changes)
    return LLMSettings(**values)


BROKEN_ANSWERS = {
    "deep-json": (DEEP, "nests 100000 levels deep"),
    "esc-in-group-name": (ESCAPED_GROUP, r"'\x1b[31mTops\x1b[0m', holds the control character \x1b"),
    "group-name-of-100000-chars": (LONG_GROUP, "is 100,000 characters long"),
    "esc-in-class-name": (GOOD.replace('"Bag"', json.dumps(f"Bag{ESC}[8m")), r"'Bag\x1b[8m' is not one"),
}


@pytest.mark.parametrize(("answer", "problem"), BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys())
def test_broken_llm_answer_is_sent_back_then_fixed(
    llm_server: ScriptedLLMServer, tmp_path: Path, answer: str, problem: str
) -> None:
    llm_server.answer(answer, GOOD)
    tree = build_llm_tree(FASHION_MNIST, 2, settings_for(llm_server, tmp_path))
    assert len(llm_server.requests) == 2
    assert problem in llm_server.messages[1][-1]["content"]  # the model is told what was wrong
    names = [tree.node(n).name for n in tree.iter_nodes()]
    assert "Tops" in names and not any(ESC in n for n in names)


@pytest.mark.parametrize(("answer", "problem"), BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys())
def test_broken_llm_answer_every_time_is_one_line(
    llm_server: ScriptedLLMServer, tmp_path: Path, answer: str, problem: str
) -> None:
    llm_server.answer(answer, answer)
    settings = settings_for(llm_server, tmp_path, max_retries=1)
    with pytest.raises(NhlError, match="the LLM gave no valid grouping after 2 attempts") as info:
        build_llm_tree(FASHION_MNIST, 2, settings)
    message = str(info.value)
    assert problem in message and "\n" not in message and ESC not in message and len(message) < 1200
    assert not settings.cache.exists()  # a broken answer is never cached


def test_broken_llm_answer_fails_the_cli_in_one_line(llm_server: ScriptedLLMServer, tmp_path: Path) -> None:
    llm_server.answer(ESCAPED_GROUP, ESCAPED_GROUP)
    out = tmp_path / "tree.json"
    run = run_nhl(
        "hierarchy", "build", "--source", "llm", "--levels", "2", "--base-url", llm_server.base_url,
        "--model", "test-model", "--max-retries", "1", "-o", out,
    )  # fmt: skip
    assert_one_line_error(run, "no valid grouping", r"\x1b[31mTops")
    assert ESC not in run.err + run.out and not out.exists()


SERVER_BODIES = {
    "deep-json-body": ("{" + '"a":[' * 50_000, 200, "a JSON body nested 50001 levels deep"),
    "esc-in-error-message": (json.dumps({"error": {"message": f"{ESC}[2Jbad"}}), 400, r"\x1b[2Jbad"),
}


@pytest.mark.parametrize(("body", "status", "fragment"), SERVER_BODIES.values(), ids=SERVER_BODIES.keys())
def test_hostile_server_body_is_one_line(
    llm_server: ScriptedLLMServer, tmp_path: Path, body: str, status: int, fragment: str
) -> None:
    llm_server.send_raw(body, status=status)
    with pytest.raises(NhlError) as info:
        build_llm_tree(FASHION_MNIST, 2, settings_for(llm_server, tmp_path))
    message = str(info.value)
    assert fragment in message and ESC not in message and "\n" not in message


# ------------------------------------------------------------------------------------ LLM caches
def test_cache_with_bom_is_read(llm_server: ScriptedLLMServer, tmp_path: Path) -> None:
    settings = settings_for(llm_server, tmp_path)
    llm_server.answer(GOOD)
    first = build_llm_tree(FASHION_MNIST, 2, settings)
    settings.cache.write_bytes(b"\xef\xbb\xbf" + settings.cache.read_bytes())
    assert build_llm_tree(FASHION_MNIST, 2, settings) == first
    assert len(llm_server.requests) == 1  # the second build came from the cache


BAD_CACHES = {
    "deep-json": (lambda text: DEEP, "nested 100000 levels deep"),
    "esc-in-cached-answer": (
        lambda text: text.replace('\\"Tops\\"', '\\"\\u001b[31mTops\\"'),
        r"the answer for this request has problems",
    ),
    "a-list": (lambda text: "[]", "is not an nhl LLM cache"),
}


@pytest.mark.parametrize(("spoil", "fragment"), BAD_CACHES.values(), ids=BAD_CACHES.keys())
def test_bad_cache_is_refused_in_one_line(
    llm_server: ScriptedLLMServer, tmp_path: Path, spoil: Any, fragment: str
) -> None:
    settings = settings_for(llm_server, tmp_path)
    llm_server.answer(GOOD)
    build_llm_tree(FASHION_MNIST, 2, settings)
    settings.cache.write_text(spoil(settings.cache.read_text()))
    with pytest.raises(NhlError) as info:
        build_llm_tree(FASHION_MNIST, 2, settings)
    message = str(info.value)
    assert fragment in message and ESC not in message and "\n" not in message
    assert len(llm_server.requests) == 1  # nothing asked again behind the user's back
    out = tmp_path / "tree.json"
    run = run_nhl(
        "hierarchy", "build", "--source", "llm", "--levels", "2", "--base-url", llm_server.base_url,
        "--model", "test-model", "--cache", settings.cache, "-o", out,
    )  # fmt: skip
    assert_one_line_error(run, fragment)
    assert not out.exists()


# ------------------------------------------------------------------------------------ HTTP 429, 5xx
BUSY = {
    "429-retry-after-0": ({"status": 429, "message": "Rate limit reached", "retry_after": "0"}, {}),
    "429-backoff": ({"status": 429, "message": "Rate limit reached"}, {}),
    "503-backoff": ({"status": 503, "message": "overloaded"}, {}),
    "500-twice": ({"status": 500, "message": "oops", "times": 2}, {}),
}


@pytest.mark.parametrize(("failure", "changes"), BUSY.values(), ids=BUSY.keys())
def test_busy_server_is_retried_then_succeeds(
    llm_server: ScriptedLLMServer, tmp_path: Path, failure: dict[str, Any], changes: dict[str, Any]
) -> None:
    llm_server.fail(**failure)
    llm_server.answer(GOOD)
    tree = build_llm_tree(FASHION_MNIST, 2, settings_for(llm_server, tmp_path, **changes))
    assert tree.num_classes == 10
    assert len(llm_server.requests) == failure.get("times", 1) + 1


GIVE_UP = {
    "429-forever": (
        {"status": 429, "message": "Rate limit reached", "retry_after": "0", "times": 10},
        {"http_retries": 2},
        3,
        "answered HTTP 429: Rate limit reached (rate limit; 3 attempts",
    ),
    "503-forever": (
        {"status": 503, "message": "overloaded", "times": 10},
        {"http_retries": 1},
        2,
        "answered HTTP 503: overloaded (server error; 2 attempts",
    ),
    "retry-after-beyond-the-wait": (
        {"status": 429, "message": "slow down", "retry_after": "3600"},
        {},
        1,
        "it asked to wait 3600 s more, beyond the 60 s",
    ),
    "backoff-beyond-the-wait": (
        {"status": 429, "message": "slow down", "times": 10},
        {"backoff": 100.0},
        1,
        "(rate limit; 1 attempt over 0 s)",
    ),
    "quota-used-up": (
        {"status": 429, "message": "You exceeded your current quota", "code": "insufficient_quota"},
        {},
        1,
        "says the account's quota is used up",
    ),
}


@pytest.mark.parametrize(("failure", "changes", "requests", "fragment"), GIVE_UP.values(), ids=GIVE_UP.keys())
def test_busy_server_gives_a_one_line_error_when_retries_run_out(
    llm_server: ScriptedLLMServer,
    tmp_path: Path,
    failure: dict[str, Any],
    changes: dict[str, Any],
    requests: int,
    fragment: str,
) -> None:
    llm_server.fail(**failure)
    with pytest.raises(NhlError) as info:
        build_llm_tree(FASHION_MNIST, 2, settings_for(llm_server, tmp_path, **changes))
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert len(llm_server.requests) == requests


@pytest.mark.parametrize("forever", [False, True], ids=["429-then-200", "429-forever"])
def test_busy_server_through_the_cli(llm_server: ScriptedLLMServer, tmp_path: Path, forever: bool) -> None:
    llm_server.fail(429, "Rate limit reached", retry_after="0", times=20 if forever else 1)
    llm_server.answer(GOOD)
    out = tmp_path / "tree.json"
    run = run_nhl(
        "hierarchy", "build", "--source", "llm", "--levels", "2", "--base-url", llm_server.base_url,
        "--model", "test-model", "-o", out,
    )  # fmt: skip
    if forever:
        assert_one_line_error(run, "answered HTTP 429: Rate limit reached", "6 attempts")
        assert not out.exists() and len(llm_server.requests) == 6
    else:
        assert run.code == 0, run.err
        assert len(json.loads(out.read_text())["classes"]) == 10 and len(llm_server.requests) == 2


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, "past"),
        ({}, None),
    ],
)
def test_retry_after_header(headers: dict[str, str], seconds: Any) -> None:
    got = retry_after(_Response(headers))
    if seconds == "past":
        assert got is not None and got < 0  # a date gone by: no wait
    else:
        assert got == seconds


# ------------------------------------------------------------------------------------ nltk warnings
WORDNET_CASES = {
    "unknown-wordnet-id": (
        ["hierarchy", "build", "--source", "wordnet", "--classes", "{classes}", "-o", "{out}"],
        "n00000001\ntruck\n",
        "n00000001 is not a WordNet 3.0 noun id",
    ),
    "unknown-synset-name": (
        ["hierarchy", "build", "--source", "wordnet", "--classes", "{classes}", "-o", "{out}"],
        "dog.n.99\ntruck\n",
        "'dog.n.99' is not a WordNet 3.0 synset",
    ),
    "unknown-wordnet-id-hybrid": (
        ["hierarchy", "build", "--source", "hybrid", "--classes", "{classes}", "-o", "{out}"],
        "n99999999\ntruck\n",
        "n99999999 is not a WordNet 3.0 noun id",
    ),
    "resolve-unknown-wordnet-id": (
        ["hierarchy", "resolve", "fashion-mnist-wordnet-l2", "n00000001"],
        None,
        "'n00000001' is neither a class or node of this tree",
    ),
}


@pytest.mark.parametrize(("args", "classes", "fragment"), WORDNET_CASES.values(), ids=WORDNET_CASES.keys())
def test_no_nltk_warning_before_the_error(
    tmp_path: Path, args: list[str], classes: str | None, fragment: str
) -> None:
    path = tmp_path / "classes.txt"
    if classes is not None:
        path.write_text(classes)
    out = tmp_path / "tree.json"
    run = run_nhl(*(a.format(classes=path, out=out) for a in args))
    assert_one_line_error(run, fragment)  # one line: no UserWarning above it
    assert "Warning" not in run.err and not out.exists()
