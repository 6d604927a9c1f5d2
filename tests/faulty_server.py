"""A fault-injecting OpenAI-compatible server on 127.0.0.1, for the teacher tests and benchmark.

Serves `/v1/models`, `/v1/chat/completions` and `/v1/completions`. What each request gets is
scripted two ways:

* a marker in the request text, `[faults 500,429@2,hang,drop,badjson,empty,fewer]`: the k-th time
  this distinct request arrives it gets the k-th fault of the list; later arrivals are answered;
* a `plan(seen) -> Fault | None` callable for run-wide scripts (500 forever, 5% 429s, ...).

Every request is recorded (`requests`: its key, which arrival of that key it was, and what it got);
`successes` counts the answers fully written per distinct request, so a test can prove that no
request was answered twice. A distinct request is keyed by its messages (chat) or prompt
(completions), not by `n`.

    with FaultyServer(latency_s=0.5) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none")

Faults (`Fault.kind`): ok (after `delay_s`), status (`status` code, optional `Retry-After`), hang
(sleep `delay_s`, then close without answering), drop (close the socket at once), badjson (200 with
a truncated JSON body), empty (200 with `choices: []`), fewer (one choice whatever `n` asked for).
"""
from __future__ import annotations

import collections
import enum
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MARKER = re.compile(r"\[faults ([^\]]*)\]")


class Kind(str, enum.Enum):
    OK = "ok"
    STATUS = "status"
    HANG = "hang"
    DROP = "drop"
    BADJSON = "badjson"
    EMPTY = "empty"
    FEWER = "fewer"


@dataclass(frozen=True)
class Fault:
    kind: Kind = Kind.OK
    status: int = 200
    retry_after: float | None = None   # seconds, sent as the Retry-After header
    delay_s: float | None = None       # ok: latency (None = the server's); hang: how long

    @staticmethod
    def parse(token: str) -> "Fault":
        """`500`, `429@2` (status, Retry-After 2 s), `hang`, `hang@3`, `drop`, `badjson`, ..."""
        name, _, arg = token.strip().partition("@")
        if name.isdigit():
            return Fault(Kind.STATUS, int(name), float(arg) if arg else None)
        return Fault(Kind(name), delay_s=float(arg) if arg else None)


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    index: int          # arrival order over the whole server, from 0
    key: str            # the distinct request (its messages or prompt as JSON)
    arrival: int        # 0 for the first time this key arrived, 1 for the second, ...
    n: int              # choices asked for
    fault: Kind
    t: float            # time.monotonic() at arrival


class FaultyServer:
    def __init__(self, latency_s: float = 0.0, plan: Callable[[Seen], Fault | None] | None = None,
                 hang_s: float = 5.0, usage: tuple[int, int] | None = None):
        """`usage` fixes (prompt_tokens, completion_tokens) per answer; default: chars / 4."""
        self.latency_s, self.plan, self.hang_s, self.usage = latency_s, plan, hang_s, usage
        self.requests: list[Seen] = []
        self.successes: collections.Counter[str] = collections.Counter()
        self._arrivals: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real endpoint

            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": "faulty", "object": "model", "created": 0,
                         "owned_by": "tests"}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner._handle(self, body, chat=self.path.endswith("/chat/completions"))

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # 64+ clients connect at once in the benchmark

        self.server = Server(("127.0.0.1", 0), Handler)
        # polled every 20 ms: shutdown() waits for the next poll (0.5 s by default)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    # -------------------------------------------------------------------------------- answering

    def _fault_for(self, seen: Seen, text: str) -> Fault:
        m = MARKER.search(text)
        if m:
            script = [t for t in m.group(1).split(",") if t.strip()]
            if seen.arrival < len(script):
                return Fault.parse(script[seen.arrival])
        return (self.plan(seen) if self.plan else None) or Fault()

    def _handle(self, h: BaseHTTPRequestHandler, body: dict, chat: bool) -> None:
        payload = body["messages"] if chat else body["prompt"]
        key = json.dumps(payload, sort_keys=True)
        text = payload[-1]["content"] if chat else payload
        n = int(body.get("n") or 1)
        with self._lock:
            arrival = self._arrivals[key]
            self._arrivals[key] += 1
            probe = Seen(len(self.requests), key, arrival, n, Kind.OK, time.monotonic())
            fault = self._fault_for(probe, text)
            self.requests.append(Seen(probe.index, key, arrival, n, fault.kind, probe.t))
        if fault.kind is Kind.HANG:
            time.sleep(fault.delay_s if fault.delay_s is not None else self.hang_s)
            h.close_connection = True  # and no answer at all
            return
        if fault.kind is Kind.DROP:
            h.close_connection = True
            return
        time.sleep(fault.delay_s if fault.delay_s is not None else self.latency_s)
        if fault.kind is Kind.STATUS:
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after else {}
            h._send(fault.status, json.dumps({"error": {"message": f"injected {fault.status}",
                                                        "type": "injected"}}).encode(), headers)
            return
        if fault.kind is Kind.BADJSON:
            h._send(200, b'{"id": "x", "object": "chat.completion", "choices": [{"ind')
            return
        count = 0 if fault.kind is Kind.EMPTY else 1 if fault.kind is Kind.FEWER else n
        texts = [f"reply {j} to: {text}" for j in range(count)]
        choices = [{"index": j, "finish_reason": "stop",
                    **({"message": {"role": "assistant", "content": t}} if chat else {"text": t})}
                   for j, t in enumerate(texts)]
        pt, ct = self.usage or (len(key) // 4, sum(len(t) for t in texts) // 4)
        h._send(200, json.dumps({
            "id": f"cmpl-{probe.index}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": body.get("model", "faulty"), "choices": choices,
            "usage": {"prompt_tokens": pt, "completion_tokens": ct,
                      "total_tokens": pt + ct}}).encode())
        if count:
            with self._lock:
                self.successes[key] += 1

    # --------------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FaultyServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def key_of(messages: list[dict[str, str]]) -> str:
    """The server's key for a chat request with these messages."""
    return json.dumps(messages, sort_keys=True)
