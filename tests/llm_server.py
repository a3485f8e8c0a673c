"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for tests of the LLM sources.

It speaks real HTTP, so the tests go through the real ``openai`` client: each POST to
``/v1/chat/completions`` takes the next scripted reply (an answer text, an HTTP error, a raw body
such as an HTML page, or a delay that outlasts the client's timeout) and records the request
body. Any other path gets a web framework's plain 404 (``{"detail": "Not Found"}``, as vLLM's
FastAPI sends), the way a real server answers a base URL that lacks ``/v1``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED = 1_700_000_000


@dataclass(frozen=True)
class Reply:
    """One scripted reply: ``content`` with HTTP 200, an error ``status`` (with an OpenAI-style
    ``code``, and a ``Retry-After`` header when ``retry_after`` is given), or a ``raw`` body sent
    as is; after ``delay`` s."""

    content: str | None = None
    status: int = 200
    delay: float = 0.0
    message: str = "scripted error"
    code: str | None = None
    raw: bytes | None = None
    content_type: str = "application/json"
    retry_after: str | None = None


class ScriptedLLMServer:
    """A chat-completions server whose answers the test queues and whose requests it inspects."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # lower-cased names
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="llm-server", daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def root_url(self) -> str:
        """The server without ``/v1``: the base URL users get wrong."""
        return self.base_url.removesuffix("/v1")

    # ------------------------------------------------------------------ scripting
    def answer(self, *contents: str) -> None:
        """Queue answers with these texts, one per request."""
        for content in contents:
            self.replies.append(Reply(content=content))

    def fail(
        self,
        status: int,
        message: str = "scripted error",
        code: str | None = None,
        retry_after: str | None = None,
        times: int = 1,
    ) -> None:
        """Queue ``times`` HTTP error responses with an OpenAI-style error body (and a
        ``Retry-After: retry_after`` header, e.g. ``"0"`` so that a client retries at once)."""
        for _ in range(times):
            self.replies.append(Reply(status=status, message=message, code=code, retry_after=retry_after))

    def send_raw(self, body: str | bytes, content_type: str = "application/json", status: int = 200) -> None:
        """Queue a response whose body is sent as is: an HTML page, broken JSON, a JSON list..."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.replies.append(Reply(status=status, raw=data, content_type=content_type))

    def stall(self, seconds: float, content: str = "{}") -> None:
        """Queue an answer sent only after ``seconds`` (to trip the client's timeout)."""
        self.replies.append(Reply(content=content, delay=seconds))

    @property
    def messages(self) -> list[list[dict[str, Any]]]:
        """The ``messages`` of every request received, in order."""
        return [r.get("messages", []) for r in self.requests]

    def close(self) -> None:
        self._stopping.set()  # wakes handlers that are stalling
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            if not self.replies:
                return Reply(status=500, message="the test queued no reply for this request")
            return self.replies.popleft()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send(
                self,
                status: int,
                payload: Any,
                content_type: str = "application/json",
                retry_after: str | None = None,
            ) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _error(
                self, status: int, message: str, code: str | None = None, retry_after: str | None = None
            ) -> None:
                self._send(
                    status,
                    {
                        "error": {
                            "message": message,
                            "type": "invalid_request_error",
                            "param": None,
                            "code": code,
                        }
                    },
                    retry_after=retry_after,
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"detail": "Not Found"})
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._error(400, "request body is not JSON")
                    return
                reply = server._next(body, {k.lower(): v for k, v in self.headers.items()})
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                if reply.raw is not None:
                    self._send(reply.status, reply.raw, reply.content_type)
                    return
                if reply.status != 200:
                    self._error(reply.status, reply.message, reply.code, reply.retry_after)
                    return
                n = len(server.requests)
                content = reply.content or ""
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-scripted-{n}",
                        "object": "chat.completion",
                        "created": CREATED,
                        "model": body.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": len(content.split()),
                            "total_tokens": prompt_tokens + len(content.split()),
                        },
                    },
                )

        return Handler
