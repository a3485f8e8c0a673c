"""LLM-assisted category trees: one chat request groups the classes, every answer is checked and cached.

Any OpenAI-compatible server works (``base_url``). The answer must be JSON of a fixed shape; an
answer with problems (a class missing, invented or repeated, classes at the wrong depth, bad
JSON) goes back to the model in the same conversation with the problems listed, a few times at
most. Only answers that pass are cached, in a JSON file keyed by the first request, so a rebuild
with a warm cache makes no request, needs no API key and writes a byte-identical tree.
"""

from __future__ import annotations

import difflib
import email.utils
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhlcli.atomic import atomic_write_text
from nhlcli.errors import NhlError
from nhlcli.jsonio import MAX_JSON_DEPTH, json_depth, loads_json
from nhlcli.taxonomy.classes import ClassEntry, flat_nested, leaf_node
from nhlcli.taxonomy.compress import check_levels, default_group_counts
from nhlcli.taxonomy.labels import ROOT_ID, name_problem, normalize_label, quoted
from nhlcli.taxonomy.tree import UTF8_BOM, Tree, check_format_version, tool_stamp
from nhlcli.text import one_line, printable

CACHE_FORMAT = "nhl-llm-cache"
CACHE_VERSION = 1
# Bump when the prompts change: recorded in the tree's source so a tree says which prompt made it.
PROMPT_VERSION = 1
MAX_PROBLEMS = 20
SYSTEM_PROMPT = (
    "You organise the classes of an image classifier into a semantic hierarchy of named groups. "
    "You answer with JSON only, no prose."
)


@dataclass(frozen=True)
class LLMSettings:
    """How to reach the LLM and where to cache its answers."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None  # any OpenAI-compatible server; None = the openai client's default
    cache: Path | None = None  # JSON cache file of request/answer pairs
    max_retries: int = 3  # how many times an invalid answer is sent back with its problems
    timeout: float = 120.0  # seconds per HTTP request
    api_key_env: str = "OPENAI_API_KEY"
    # HTTP 429 (rate limit) and 5xx (server trouble) are retried: after ``backoff`` s, doubling
    # each time (a Retry-After header from the server wins), at most ``http_retries`` times and
    # ``retry_wait`` s of waiting in all
    http_retries: int = 5
    backoff: float = 1.0
    retry_wait: float = 60.0


# ---------------------------------------------------------------------------------------- labels
def class_labels(entries: Sequence[ClassEntry]) -> list[str]:
    """The name each class goes by in prompts: its display name, with its id where names clash.

    ImageNet has two "crane" classes; the LLM sees ``crane [n02012849]`` and ``crane [n03126707]``.
    """
    counts = Counter(normalize_label(e.name) for e in entries)
    labels = [e.name if counts[normalize_label(e.name)] == 1 else f"{e.name} [{e.id}]" for e in entries]
    if len({normalize_label(x) for x in labels}) != len(labels):  # a name that looks like "x [id]"
        labels = [e.id for e in entries]
    return labels


class LabelMatcher:
    """Resolves names in an answer to class positions, forgiving case, spaces and hyphens."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self._index = {normalize_label(x): i for i, x in enumerate(labels)}
        self._bare: dict[str, list[str]] = {}
        for label in labels:
            bare = re.sub(r"\s*\[[^\]]*\]$", "", label)
            if bare != label:
                self._bare.setdefault(normalize_label(bare), []).append(label)

    def find(self, name: str) -> int | None:
        return self._index.get(normalize_label(name))

    def unknown(self, name: str, what: str = "one of the classes") -> str:
        """The problem text for a name that is not a known class, with a hint where one helps."""
        options = self._bare.get(normalize_label(name))
        if options:
            return f"{name!r} is ambiguous: write one of {', '.join(repr(o) for o in options)}"
        close = difflib.get_close_matches(name, self.labels, n=1, cutoff=0.75) if len(name) <= 1000 else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{quoted(name, 200)} is not {what}{hint}"


def count_problems(
    matcher: LabelMatcher, mentions: Sequence[str], wanted: Sequence[int], what: str = "one of the classes"
) -> tuple[list[str], dict[int, int]]:
    """Problems of a list of class mentions that should name each of ``wanted`` exactly once."""
    problems: list[str] = []
    counts: Counter[int] = Counter()
    reported: set[str] = set()
    for name in mentions:
        idx = matcher.find(name)
        if idx is None or idx not in wanted:
            if name not in reported:
                problems.append(matcher.unknown(name, what))
                reported.add(name)
            continue
        counts[idx] += 1
    for idx in wanted:
        if counts[idx] == 0:
            problems.append(f"class {matcher.labels[idx]!r} is missing")
        elif counts[idx] > 1:
            problems.append(f"class {matcher.labels[idx]!r} appears {counts[idx]} times")
    return problems, dict(counts)


# ---------------------------------------------------------------------------------------- JSON
class JsonObject(dict):  # type: ignore[type-arg]
    """A parsed JSON object that remembers keys it saw more than once (json keeps only the last)."""

    repeated: Counter[str]


def _object_pairs(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    obj.repeated = Counter(k for k, _ in pairs)
    return obj


def parse_answer(text: str | None) -> tuple[Any, list[str]]:
    """The JSON value of an answer and the problems reading it; ```json fences and prose around it are ok."""
    if text is None or not text.strip():
        return None, ["the answer was empty; answer with the JSON object only"]
    body = text.strip()
    fenced = re.search(r"```(?:json|JSON)?\s*\n?(.*?)```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1).strip()
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:  # json recurses once per level: a RecursionError, not a problem list
        return None, [
            f"the answer nests {depth} levels deep, more than the {MAX_JSON_DEPTH} any grouping needs; "
            "answer with the JSON object only"
        ]
    try:
        return json.loads(body, object_pairs_hook=_object_pairs), []
    except json.JSONDecodeError as exc:
        first, last = body.find("{"), body.rfind("}")
        if 0 <= first < last:
            try:
                return json.loads(body[first : last + 1], object_pairs_hook=_object_pairs), []
            except json.JSONDecodeError:
                pass
        return None, [
            f"the answer is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "answer with the JSON object only"
        ]


def cap_problems(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]


# ---------------------------------------------------------------------------------------- cache
def cache_key(model: str, messages: Sequence[dict[str, str]]) -> str:
    """sha256 of the canonical JSON of the first request: equal requests share one answer."""
    canon = json.dumps(
        {"model": model, "messages": list(messages)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class AnswerCache:
    """The JSON file of validated answers; missing file = empty cache."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            self.entries = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        fix = "delete it or pass another cache file"
        shown = printable(str(path))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise NhlError(f"cannot read LLM cache {shown}: {exc.strerror or exc}; {fix}") from None
        try:  # nesting-limited: a deeply nested file is a one-line error, not a RecursionError
            data = loads_json(raw.removeprefix(UTF8_BOM), f"LLM cache {shown}")
        except NhlError as exc:
            raise NhlError(f"{exc}; {fix}") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise NhlError(f"{shown} is not an nhl LLM cache (no 'format': '{CACHE_FORMAT}'); {fix}")
        check_format_version(data.get("version"), CACHE_VERSION, f"LLM cache {shown}", fix)
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("answer"), str) for v in entries.values()
        ):
            raise NhlError(f"LLM cache {shown}: 'entries' must map keys to objects with an 'answer'; {fix}")
        return entries

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store a validated answer and rewrite the file atomically, keys sorted (a stable file)."""
        self.entries[key] = entry
        if self.path is None:
            return
        data = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": self.entries}
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------- client
BRIEF = 80  # characters of a server's body quoted in a message


def _brief(text: str, limit: int = BRIEF) -> str:
    """``text`` on one line, cut to ``limit`` characters: enough to recognise, never a whole page;
    control characters escaped, so a server's text cannot drive the terminal."""
    line = printable(one_line(text))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _html_page(text: str) -> str | None:
    """``an HTML page titled '...'`` when ``text`` is HTML (a proxy's or web server's page), else None."""
    stripped = text.lstrip()
    if not stripped.startswith("<"):
        return None
    title = re.search(r"<title[^>]*>(.*?)</title>", stripped, re.IGNORECASE | re.DOTALL)
    if title and title.group(1).strip():
        return f"an HTML page titled {_brief(title.group(1), 60)!r}"
    return "an HTML page"


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "object"


class NotChatCompletion(ValueError):
    """A response body that is not an OpenAI chat completion; the message says briefly what it was."""


def _not_a_completion(body: str, content_type: str) -> str:
    """What a response body that holds no chat completion is, briefly (never the whole page)."""
    text = body.strip()
    if not text:
        return "an empty body"
    page = _html_page(text)
    if page or "html" in content_type.lower():
        return page or f"an HTML page ({_brief(text)!r})"
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        return f"a JSON body nested {depth} levels deep"
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return f"a body that is not JSON: {_brief(text)!r}"
    if not isinstance(data, dict):
        return f"a JSON {_json_kind(data)} instead of an object: {_brief(text)!r}"
    if "choices" in data:
        return f"'choices' that is a JSON {_json_kind(data['choices'])}, not a list"
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"an error: {_brief(error['message'], 160)!r}"
    if isinstance(error, str):
        return f"an error: {_brief(error, 160)!r}"
    keys = ", ".join(repr(k) for k in list(data)[:6]) or "none"
    return f"a JSON object without 'choices' (keys: {keys})"


def completion_text(completion: object, body: str = "", content_type: str = "") -> str | None:
    """The answer text of the openai client's typed ``ChatCompletion`` (``None`` for no choices).

    The client builds the completion from whatever JSON object the server sent without checking
    it, and hands back the body itself (a str for an HTML page, a list) for other JSON; then
    :class:`NotChatCompletion` says what came instead, read from the raw ``body``.
    """
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    if not isinstance(completion, ChatCompletion) or not isinstance(completion.choices, list):
        raise NotChatCompletion(_not_a_completion(body, content_type))
    if not completion.choices:
        return None
    first = completion.choices[0]
    message = first.message if isinstance(first, Choice) else None
    if not isinstance(message, ChatCompletionMessage):
        raise NotChatCompletion("a first choice without a 'message' object")
    content: object = message.content
    if content is None or isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else None
    if parts is not None and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        return "".join(p["text"] for p in parts)  # content given as text parts
    raise NotChatCompletion(f"a message whose 'content' is a JSON {_json_kind(content)}, not text")


def _api_message(exc: Any) -> str:
    """The server's own error message, briefly, without the client's "Error code: N - {...}" wrapping."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return _brief(body[key], 200)
    if isinstance(body, str):
        return _html_page(body) or _brief(body, 200)
    return _brief(re.sub(r"^Error code: \d+ - ", "", str(getattr(exc, "message", exc))), 200)


def _names_model(exc: Any, model: str) -> bool:
    """Whether a 404 says the model is unknown, rather than that the URL serves no such API.

    OpenAI says so with code ``model_not_found``; other servers (vLLM, Ollama, llama.cpp) name
    the model or say "model" in a JSON error, while a wrong path gets the web server's plain
    "Not Found" (text, HTML or ``{"detail": "Not Found"}``).
    """
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("code") == "model_not_found":
        return True
    message = body.get("message") if isinstance(body, dict) else body
    if not isinstance(message, str) or _html_page(message):
        return False
    lower = message.lower()
    named = re.search(rf"(?<![\w.:/-]){re.escape(model.lower())}(?![\w.:/-])", lower)
    return bool(named or re.search(r"\bmodels?\b", lower))


class _Chat:
    """The openai client, made on the first request only (a warm cache needs no key)."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._key: str | None = None

    def _make(self) -> Any:
        key = os.environ.get(self.settings.api_key_env, "").strip()
        if not key:
            raise NhlError(
                f"no API key: set {self.settings.api_key_env} for the LLM server "
                f"({self.settings.base_url or 'the OpenAI API'}), or use a cache file that already "
                "holds these answers"
            )
        import openai

        self._key = key
        return openai.OpenAI(
            api_key=key, base_url=self.settings.base_url, timeout=self.settings.timeout, max_retries=0
        )

    def _shown(self, text: str) -> str:
        """A server's text for a message: one line, control characters escaped, the API key out."""
        return printable(one_line(text, secret=self._key))

    def _not_found(self, exc: Any, where: str) -> str:
        """The message for HTTP 404: an unknown model, or a base URL without the API under it."""
        detail = self._shown(_api_message(exc))
        if _names_model(exc, self.settings.model):
            return (
                f"model {self.settings.model!r} was not found at {where} (HTTP 404: {detail}); pick a "
                "model the server offers with `model`"
            )
        request = getattr(getattr(exc, "response", None), "request", None)
        url = str(request.url) if request is not None else f"{where}/chat/completions"
        hint = (
            f"; OpenAI-compatible servers usually serve it under /v1: try `base_url` {where}/v1"
            if not re.search(r"/v\d+\w*$", where)
            else ""
        )
        return (
            f"the LLM server at {where} has no chat completions API at {url} (HTTP 404: {detail}); "
            f"check `base_url`{hint}"
        )

    def complete(self, messages: list[dict[str, str]]) -> str | None:
        """One chat completion, retrying HTTP 429 and 5xx with exponential backoff; every other
        HTTP failure, every unusable body and running out of retries is a one-line :class:`NhlError`.

        The retries are ours, not the openai client's (``max_retries=0`` there): its loop also
        retries timeouts (each up to ``timeout`` s), has no bound on the total wait, and cannot be
        told to wait less, so tests of it would sleep for seconds.
        """
        s = self.settings
        waited = 0.0
        for attempt in range(1, max(0, s.http_retries) + 2):
            try:
                return self._complete_once(messages)
            except _Transient as busy:
                doubled = s.backoff * 2.0 ** min(attempt - 1, 60)  # capped: no float overflow
                wait = max(0.0, busy.retry_after if busy.retry_after is not None else doubled)
                if attempt > s.http_retries or waited + wait > s.retry_wait:
                    raise NhlError(busy.give_up(attempt, waited, wait, s)) from None
                time.sleep(wait)
                waited += wait
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _complete_once(self, messages: list[dict[str, str]]) -> str | None:
        import openai

        if self._client is None:
            self._client = self._make()
        s = self.settings
        where = str(self._client.base_url).rstrip("/")
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=s.model, messages=messages, temperature=0
            )
            response = raw.http_response
            try:
                completion = raw.parse()  # the typed ChatCompletion, unless the body is no JSON object
            except (json.JSONDecodeError, RecursionError, openai.APIResponseValidationError):
                completion = None
        except openai.APITimeoutError as exc:
            raise NhlError(
                f"the LLM server at {where} did not answer within {s.timeout:g} s; raise "
                "`timeout` or check that the server is up"
            ) from exc
        except openai.APIConnectionError as exc:
            cause = self._shown(str(exc.__cause__ or exc))
            raise NhlError(
                f"could not reach the LLM server at {where} ({cause}); check `base_url` and "
                "that the server is running"
            ) from exc
        except openai.AuthenticationError as exc:
            raise NhlError(
                f"the LLM server at {where} rejected the API key in {s.api_key_env} "
                f"(HTTP {exc.status_code}); set a valid key"
            ) from exc
        except openai.NotFoundError as exc:
            raise NhlError(self._not_found(exc, where)) from exc
        except openai.APIStatusError as exc:
            quota = exc.status_code == 429 and getattr(exc, "code", None) == "insufficient_quota"
            if quota:
                raise NhlError(
                    f"the LLM server at {where} says the account's quota is used up (HTTP 429: "
                    f"{self._shown(_api_message(exc))}); check the plan and billing of the key "
                    f"in {s.api_key_env}"
                ) from exc
            if exc.status_code == 429 or exc.status_code >= 500:
                raise _Transient(
                    where, exc.status_code, self._shown(_api_message(exc)), retry_after(exc.response)
                ) from exc
            raise NhlError(
                f"the LLM server at {where} answered HTTP {exc.status_code}: {self._shown(_api_message(exc))}"
            ) from exc
        except openai.APIError as exc:
            raise NhlError(
                f"the LLM server at {where} sent an unusable response: {self._shown(str(exc))}"
            ) from exc
        try:
            return completion_text(completion, response.text, response.headers.get("content-type", ""))
        except NotChatCompletion as exc:
            raise NhlError(
                f"the LLM server at {where} did not answer like an OpenAI-compatible chat completions "
                f"API (it sent {self._shown(str(exc))}); check `base_url`: it must be the "
                "API's root, under which POST /chat/completions answers (e.g. http://localhost:8000/v1)"
            ) from exc


def retry_after(response: Any) -> float | None:
    """Seconds the server asks us to wait (``Retry-After``: seconds or an HTTP date, or
    ``retry-after-ms``), or ``None`` when it does not say."""
    headers = getattr(response, "headers", None) or {}
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        return seconds if seconds == seconds else None  # NaN says nothing
    date = email.utils.parsedate_tz(headers.get("retry-after") or "")
    if date is None:
        return None
    try:
        return float(email.utils.mktime_tz(date) - time.time())
    except (OverflowError, ValueError, OSError):
        return None


class _Transient(Exception):
    """HTTP 429 or 5xx: the server is busy or failing now, and a later try may pass."""

    def __init__(self, where: str, status: int, detail: str, retry_after: float | None) -> None:
        super().__init__(detail)
        self.where, self.status, self.detail, self.retry_after = where, status, detail, retry_after

    def give_up(self, attempts: int, waited: float, wait: float, settings: LLMSettings) -> str:
        """The message when retrying ends: what the server said, how long we tried, what to do."""
        what = "rate limit" if self.status == 429 else "server error"
        tried = f"{attempts} attempt{'s' if attempts != 1 else ''} over {waited:.0f} s"
        asked = (
            f"; it asked to wait {self.retry_after:.0f} s more, beyond the {settings.retry_wait:g} s "
            "nhl waits in all"
            if self.retry_after is not None and waited + wait > settings.retry_wait
            else ""
        )
        fix = (
            "wait for the limit to reset and run again, or use a model or key with a higher limit"
            if self.status == 429
            else "check the server, or run again later"
        )
        return (
            f"the LLM server at {self.where} answered HTTP {self.status}: {self.detail} ({what}; "
            f"{tried}{asked}); {fix}"
        )


def ask_checked(
    settings: LLMSettings,
    messages: list[dict[str, str]],
    check: Callable[[Any], tuple[Any, list[str]]],
    what: str,
) -> tuple[Any, int]:
    """Ask until ``check`` finds no problems; the checked value and how many attempts it took.

    ``check`` takes the parsed JSON and returns ``(value, problems)``. Answers come from the cache
    when it holds this request; only answers without problems are stored there.
    """
    cache = AnswerCache(settings.cache)
    key = cache_key(settings.model, messages)
    hit = cache.get(key)
    if hit is not None:
        value, problems = _check_text(hit["answer"], check)
        if problems:
            raise NhlError(
                f"LLM cache {settings.cache}: the answer for this request has problems "
                f"({_brief(problems[0], 300)}); delete entry {key[:12]}... or the file to ask again"
            )
        return value, int(hit.get("attempts", 1))
    chat = _Chat(settings)
    conversation = list(messages)
    attempts = 1 + max(0, settings.max_retries)
    problems: list[str] = []
    for attempt in range(1, attempts + 1):
        text = chat.complete(conversation)
        value, problems = _check_text(text, check)
        if not problems:
            cache.put(
                key, {"model": settings.model, "messages": messages, "answer": text, "attempts": attempt}
            )
            return value, attempt
        conversation += [
            {"role": "assistant", "content": text or ""},
            {
                "role": "user",
                "content": "Your answer has these problems:\n"
                + "\n".join(f"- {p}" for p in cap_problems(problems))
                + "\nAnswer again with the corrected, complete JSON only.",
            },
        ]
    shown = "; ".join(_brief(p, 300) for p in problems[:3]) + ("; ..." if len(problems) > 3 else "")
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    raise NhlError(
        f"the LLM gave no valid {what} after {tries}: {shown}; try another `model` or raise `max_retries`"
    )


def _check_text(text: str | None, check: Callable[[Any], tuple[Any, list[str]]]) -> tuple[Any, list[str]]:
    data, problems = parse_answer(text)
    if problems:
        return None, problems
    value, problems = check(data)
    return value, cap_problems(problems)


# ---------------------------------------------------------------------------------------- grouping
@dataclass
class _Group:
    name: str
    groups: list[_Group]
    classes: list[int]


def _groups_example(levels: int) -> str:
    inner: Any = {"name": "...", "classes": ["...", "..."]}
    for _ in range(levels - 2):
        inner = {"name": "...", "groups": [inner, "..."]}
    return json.dumps({"groups": [inner, "..."]}).replace('"..."', "...")


def grouping_messages(labels: Sequence[str], levels: int) -> list[dict[str, str]]:
    """The request for a nested grouping of ``labels`` with classes at depth ``levels``."""
    counts = default_group_counts(len(labels), levels)
    suggestion = ", ".join(
        f"about {c} group{'s' if c != 1 else ''} at level {k} in all" for k, c in enumerate(counts, start=1)
    )
    depth = levels - 1
    user = (
        f"Group these {len(labels)} image classes into {depth} level{'s' if depth > 1 else ''} of "
        "named groups, from general to specific, so that classes that look alike or mean related "
        f"things share a group. Suggested sizes: {suggestion}.\n"
        "Rules:\n"
        "- Every class appears exactly once, spelled exactly as listed.\n"
        f'- Only the groups at level {depth} hold classes (in "classes"); '
        + ('every group above them holds subgroups (in "groups").\n' if depth > 1 else "\n")
        + '- Every group has a short descriptive "name"; groups under the same parent have '
        "different names.\n"
        "- A group may hold a single class or a single subgroup when nothing else fits.\n"
        f"Answer with JSON only, shaped like this:\n{_groups_example(levels)}\n"
        "Classes:\n" + "\n".join(labels)
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def grouping_problems(data: Any, matcher: LabelMatcher, levels: int) -> tuple[list[_Group], list[str]]:
    """The groups of an answer and its problems (empty when the answer is a valid grouping)."""
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list) or not data["groups"]:
        return [], ['the answer must be a JSON object {"groups": [...]} with a non-empty "groups" list']
    problems: list[str] = []
    mentions: list[str] = []

    def walk(items: list[Any], depth: int, parent: str | None) -> list[_Group]:
        where = f"under {parent!r}" if parent else "at the top level"
        out: list[_Group] = []
        seen: Counter[str] = Counter()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                problems.append(f"item {i + 1} {where} is not a group object")
                continue
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                problems.append(f"group {i + 1} {where} has no name")
                name = f"#{i + 1}"
            elif problem := name_problem(name.strip()):  # an escape sequence, a page of text
                problems.append(f"the name of group {i + 1} {where}, {quoted(name.strip())}, {problem}")
                name = f"#{i + 1}"
            else:
                name = name.strip()
                seen[normalize_label(name)] += 1
                if seen[normalize_label(name)] == 2:
                    problems.append(f"two groups {where} are both named {name!r}")
            subgroups, classes = item.get("groups"), item.get("classes")
            group = _Group(name, [], [])
            if classes is not None:
                if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                    problems.append(f"group {name!r}: 'classes' must be a list of class names")
                else:
                    mentions.extend(classes)
                    if classes and depth != levels - 1:
                        problems.append(
                            f"group {name!r} holds classes at depth {depth + 1} but classes "
                            f"belong at depth {levels}"
                        )
                    group.classes = [idx for c in classes if (idx := matcher.find(c)) is not None]
            if subgroups is not None:
                if not isinstance(subgroups, list):
                    problems.append(f"group {name!r}: 'groups' must be a list of groups")
                else:
                    if subgroups and depth >= levels - 1:
                        problems.append(
                            f"group {name!r} has subgroups at depth {depth + 1} but classes "
                            f"belong at depth {levels}; list them in its 'classes'"
                        )
                    group.groups = walk(subgroups, depth + 1, name)
            if not group.classes and not group.groups and not (subgroups or classes):
                problems.append(f"group {name!r} is empty")
            out.append(group)
        return out

    groups = walk(data["groups"], 1, None)
    counted, _ = count_problems(matcher, mentions, range(len(matcher.labels)))
    return groups, problems + counted


def _slug(name: str) -> str:
    return re.sub(r"[^\w]+", "-", name.lower(), flags=re.UNICODE).strip("-_") or "group"


def _nested_from_groups(groups: list[_Group], entries: Sequence[ClassEntry]) -> dict[str, Any]:
    used = {e.id for e in entries} | {ROOT_ID}

    def node(group: _Group, path: str) -> dict[str, Any]:
        base = f"{path}/{_slug(group.name)}"
        node_id, k = base, 1
        while node_id in used:
            k += 1
            node_id = f"{base}-{k}"
        used.add(node_id)
        out: dict[str, Any] = {"id": node_id, "name": group.name}
        if group.groups:
            out["children"] = [node(g, node_id) for g in group.groups]
        else:
            out["children"] = [leaf_node(entries[i]) for i in group.classes]
        return out

    return {"id": ROOT_ID, "name": "all classes", "children": [node(g, "llm") for g in groups]}


def llm_grouping(entries: Sequence[ClassEntry], levels: int, settings: LLMSettings) -> dict[str, Any]:
    """The nested tree dict of ``entries`` grouped by the LLM (or the cache) into ``levels`` levels."""
    labels = class_labels(entries)
    matcher = LabelMatcher(labels)

    def check(data: Any) -> tuple[Any, list[str]]:
        groups, problems = grouping_problems(data, matcher, levels)
        return (None, problems) if problems else (groups, [])

    groups, _ = ask_checked(settings, grouping_messages(labels, levels), check, "grouping")
    return _nested_from_groups(groups, entries)


def build_llm_tree(entries: Sequence[ClassEntry], levels: int, settings: LLMSettings, name: str = "") -> Tree:
    """A tree of exactly ``levels`` levels whose groups an LLM chose (one request, cached).

    Raises :class:`NhlError` when the server fails or gives no valid grouping within
    ``settings.max_retries`` corrections.
    """
    check_levels(levels)
    if not entries:
        raise NhlError("no classes to group; give a class list with at least one class")
    nested = flat_nested(entries) if levels == 1 else llm_grouping(entries, levels, settings)
    source = {
        "kind": "llm",
        "params": {"levels": levels, "model": settings.model, "prompt_version": PROMPT_VERSION},
        "tool": tool_stamp(),
    }
    return Tree.from_nested(nested, [e.id for e in entries], name=name, source=source)
