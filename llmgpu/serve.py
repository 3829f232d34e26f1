"""``llmgpu serve``: an OpenAI-compatible HTTP server (starlette + uvicorn, the ``serve`` extra).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (streamed as
server-sent events with ``stream: true``), ``GET /`` (a self-contained chat page) and ``GET /health``.

One GPU, many clients: a single engine thread owns the model and serves requests one at a time, in
the order they arrived (FIFO). At most ``max_queue`` requests wait; one more gets 429 with
Retry-After. A client that disconnects is taken out of the queue, or, if it is being served, stops
the generation at its next token. The KV cache left by one request is reused by the next when the
prompts share a prefix (a chat's next turn re-sends the conversation), reported as
``usage.prompt_tokens_details.cached_tokens``. (Batched decode of several requests would replace
:meth:`Engine._serve`; the queue and the events each request reads stay as they are.)

Sampling: OpenAI's ``temperature``, ``top_p``, ``seed``, ``stop``, ``max_tokens`` /
``max_completion_tokens`` (default: until the context is full), plus llama.cpp-style extras
``top_k``, ``min_p`` and ``repetition_penalty`` (also ``repeat_penalty``); unset values are llmgpu's
defaults (llama.cpp's). ``frequency_penalty`` / ``presence_penalty`` other than 0 are refused (the
sampler has the multiplicative repetition penalty instead). ``logprobs`` are the model's own
distribution (see :mod:`llmgpu.logprobs`). Fields that would change the meaning of the answer and that
llmgpu does not implement (``n`` > 1, ``tools``, ``response_format`` other than text, ``logit_bias``,
``echo``, ``suffix``, ``best_of`` > 1) get an OpenAI-shaped 400 error naming the field.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .generate import GenerationStats, cached_prefix, stream_text
from .logprobs import TokenLogprob, stream_with_logprobs
from .sample import (DEFAULT_MIN_P, DEFAULT_REPEAT_LAST_N, DEFAULT_REPETITION_PENALTY, DEFAULT_TEMPERATURE,
                     DEFAULT_TOP_K, DEFAULT_TOP_P, make_sampler)

log = logging.getLogger("llmgpu.serve")
DEFAULT_MAX_QUEUE = 32
MAX_TOP_LOGPROBS = 20
MAX_STOPS = 16


# ==== errors ===================================================================================

class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"'{param}' {why} is not supported by llmgpu", param, "unsupported_parameter")


# ==== requests =================================================================================

@dataclass
class GenRequest:
    """A validated request: everything the engine needs, and how to shape the answer."""
    kind: str  # "chat" | "completion"
    ids: list[int]
    sampler: object
    max_tokens: int
    stop: list[str]
    logprobs: int | None  # alternatives per token, None: no logprobs
    stream: bool = False
    include_usage: bool = False


def _get(body: dict, name: str, types, default=None, check=None, what: str = ""):
    """body[name] if present and not null, checked: its type and ``check`` (else a 400 naming it)."""
    v = body.get(name)
    if v is None:
        return default
    if (bool not in types and isinstance(v, bool)) or not isinstance(v, types) or (check and not check(v)):
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(v)[:60]}", name, "invalid_value")
    return v


NUMBER = (int, float)


def _refuse_unsupported(body: dict) -> None:
    if _get(body, "n", (int,), 1, what="an integer") != 1:
        raise unsupported("n", "other than 1 (one answer per request)")
    for name in ("tools", "functions", "logit_bias"):
        if body.get(name):
            raise unsupported(name, "")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise unsupported("tool_choice", "")
    rf = body.get("response_format")
    if rf is not None and (not isinstance(rf, dict) or rf.get("type") != "text"):
        raise unsupported("response_format", "other than {\"type\": \"text\"}")
    if body.get("echo"):
        raise unsupported("echo", "")
    if body.get("suffix"):
        raise unsupported("suffix", "")
    if _get(body, "best_of", (int,), 1, what="an integer") != 1:
        raise unsupported("best_of", "other than 1")
    for name in ("frequency_penalty", "presence_penalty"):
        if _get(body, name, NUMBER, 0, what="a number") != 0:
            raise APIError(400, f"'{name}' is not supported by llmgpu (its sampler has no additive penalties); "
                                "use 'repetition_penalty' (> 1 discourages repeats, as llama.cpp's "
                                "repeat_penalty) instead", name, "unsupported_parameter")


def _sampling(body: dict):
    def num(name, default):
        return _get(body, name, NUMBER, default, what="a number")

    args = dict(temperature=num("temperature", DEFAULT_TEMPERATURE), top_k=_get(body, "top_k", (int,), DEFAULT_TOP_K,
                                                                                 what="an integer"),
                top_p=num("top_p", DEFAULT_TOP_P), min_p=num("min_p", DEFAULT_MIN_P),
                repetition_penalty=num("repetition_penalty", num("repeat_penalty", DEFAULT_REPETITION_PENALTY)),
                repeat_last_n=DEFAULT_REPEAT_LAST_N, seed=_get(body, "seed", (int,), what="an integer"))
    try:
        return make_sampler(**args)
    except ValueError as e:  # the message starts with the keyword, which is also the field's name
        raise APIError(400, str(e), str(e).split(" ")[0], "invalid_value") from None


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop",
                       "invalid_value")
    return [s for s in stops if s]


def _common(body: dict, kind: str, ids: list[int], max_seq: int, logprobs: int | None) -> GenRequest:
    _refuse_unsupported(body)
    if len(ids) > max_seq:
        param = "messages" if kind == "chat" else "prompt"
        raise APIError(400, f"{param!r}: the prompt has {len(ids)} tokens, more than the context of {max_seq}; shorten it "
                            "or restart the server with a larger --ctx", param, "context_length_exceeded")
    if not ids:
        raise APIError(400, "the prompt is empty", "prompt", "invalid_value")
    room = max_seq - len(ids) + 1  # the last token needs no cache slot
    mt = _get(body, "max_completion_tokens", (int,), None, lambda v: v >= 1, "an integer >= 1")
    mt = _get(body, "max_tokens", (int,), mt, lambda v: v >= 1, "an integer >= 1")
    so = _get(body, "stream_options", (dict,), {}, what="an object")
    return GenRequest(kind, ids, _sampling(body), min(mt or room, room), _stops(body), logprobs,
                      stream=_get(body, "stream", (bool,), False, what="true or false"),
                      include_usage=bool(so.get("include_usage")))


def _message_text(i: int, m) -> dict:
    if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
        role = m.get("role") if isinstance(m, dict) else None
        raise APIError(400, f"messages[{i}]: role {role!r} is not supported (system, developer, user, "
                            "assistant)", f"messages[{i}].role", "invalid_value")
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise APIError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content",
                           "unsupported_parameter")
        content = "".join(str(p.get("text", "")) for p in content)
    if m.get("tool_calls"):
        raise unsupported(f"messages[{i}].tool_calls", "")
    if not isinstance(content, str) and not (content is None and m["role"] == "assistant"):
        raise APIError(400, f"messages[{i}].content must be a string", f"messages[{i}].content", "invalid_value")
    role = "system" if m["role"] == "developer" else m["role"]
    return {"role": role, "content": content or ""}


def parse_chat(body: dict, llm) -> GenRequest:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages",
                       "invalid_value")
    messages = [_message_text(i, m) for i, m in enumerate(msgs)]
    lp = _get(body, "logprobs", (bool,), False, what="true or false")
    top = _get(body, "top_logprobs", (int,), None, lambda v: 0 <= v <= MAX_TOP_LOGPROBS,
               f"an integer in [0, {MAX_TOP_LOGPROBS}]")
    if top is not None and not lp:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs", "invalid_value")
    try:
        ids = llm.encode(messages)
    except Exception as e:  # a template that raises (e.g. roles out of order) is the request's fault
        raise APIError(400, f"the model's chat template rejected the messages: {e}", "messages",
                       "invalid_value") from None
    return _common(body, "chat", ids, llm.model.max_seq, (top or 0) if lp else None)


def parse_completion(body: dict, llm) -> GenRequest:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one
    vocab = llm.model.config.vocab_size
    if isinstance(p, str):
        ids = llm.encode(p, chat_template=False)
    elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                           for t in p):
        ids = list(p)
    else:
        raise APIError(400, "'prompt' must be a string or a list of token ids (one prompt per request)",
                       "prompt", "invalid_value")
    lp = _get(body, "logprobs", (int,), None, lambda v: 0 <= v <= MAX_TOP_LOGPROBS,
              f"an integer in [0, {MAX_TOP_LOGPROBS}]")
    return _common(body, "completion", ids, llm.model.max_seq, lp)


# ==== the engine: one request at a time =========================================================

class _Cancelled(Exception):
    pass


@dataclass(eq=False)
class Job:
    req: GenRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("piece", text, logprobs) ... ("end", ...)
    cancel: threading.Event = field(default_factory=threading.Event)
    stats: GenerationStats = field(default_factory=GenerationStats)
    seq: int = 0  # arrival number

    def emit(self, *event) -> None:
        """From the engine thread: hand an event to the request's handler on the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass


class Engine:
    """Owns the model; serves jobs one at a time in arrival order from a bounded queue."""

    def __init__(self, llm, max_queue: int = DEFAULT_MAX_QUEUE):
        if max_queue < 1:
            raise ValueError(f"the queue must hold at least 1 request, got {max_queue}")
        self.llm, self.model, self.max_queue = llm, llm.model, max_queue
        self.cv = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.running: Job | None = None
        self.started: deque[int] = deque(maxlen=4096)  # arrival numbers, in the order they were served
        self.served = 0
        self.avg_s = 1.0  # running mean of a request's time, for Retry-After
        self._seq = itertools.count(1)
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="llmgpu-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                wait = max(1, math.ceil(self.avg_s * (len(self.waiting) + 1)))
                raise APIError(429, f"the server is busy ({len(self.waiting)} requests waiting); retry in "
                                    f"{wait} s", None, "rate_limit_exceeded", "rate_limit_error",
                               {"Retry-After": str(wait)})
            job.seq = next(self._seq)
            self.waiting.append(job)
            self.cv.notify_all()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job from the queue, or stop it at its next token."""
        with self.cv:
            job.cancel.set()
            if job in self.waiting:
                self.waiting.remove(job)
            self.cv.notify_all()  # a change of state like any other: whoever waits on it re-checks

    def wait_until(self, predicate, timeout: float) -> bool:
        """Block until ``predicate()`` holds (checked under the lock at every change), or time out."""
        with self.cv:
            return self.cv.wait_for(predicate, timeout)

    def close(self) -> None:
        with self.cv:
            self._closed = True
            for job in self.waiting:
                job.emit("error", "the server is shutting down", None)
            self.waiting.clear()
            self.cv.notify_all()

    def _run(self) -> None:
        while True:
            with self.cv:
                self.cv.wait_for(lambda: self.waiting or self._closed)
                if self._closed:
                    return
                job = self.running = self.waiting.popleft()
                self.started.append(job.seq)
                self.cv.notify_all()
            t0 = time.perf_counter()
            try:
                self._serve(job)
            finally:
                with self.cv:
                    self.running = None
                    self.served += 1
                    self.avg_s += (time.perf_counter() - t0 - self.avg_s) / min(self.served, 20)
                    self.cv.notify_all()
            job = None  # hold nothing of a finished request while waiting for the next

    def _serve(self, job: Job) -> None:
        r = job.req

        def on_token(token, logits):
            if job.cancel.is_set():
                raise _Cancelled

        kw = dict(stop=r.stop, cached=cached_prefix(self.model, r.ids), stats=job.stats, on_token=on_token)
        try:
            if r.logprobs is None:
                stream = stream_text(self.model, r.ids, r.sampler, r.max_tokens, **kw)
            else:
                stream = stream_with_logprobs(self.model, r.ids, r.sampler, r.max_tokens, r.logprobs, **kw)
            for piece in stream:
                job.emit("piece", str(piece), getattr(piece, "logprobs", None))
            job.emit("end", None, None)
        except _Cancelled:
            job.stats.finish_reason = "cancelled"
        except Exception as e:  # the request fails, the server stays up
            log.exception("request %d failed", job.seq)
            job.emit("error", f"generation failed: {type(e).__name__}: {e}", None)


# ==== answers ==================================================================================

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


def _usage(job: Job) -> dict:
    st = job.stats
    return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.new_tokens,
            "total_tokens": st.prompt_tokens + st.new_tokens,
            "prompt_tokens_details": {"cached_tokens": st.cached_tokens}}


def _lp_entry(e: TokenLogprob) -> dict:
    return {"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode("utf-8")),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8"))}
                             for t in e.top]}


def _top_dict(e: TokenLogprob) -> dict:
    # the legacy format keys alternatives by text; tokens with the same text (e.g. partial characters,
    # U+FFFD) keep the likeliest's value
    d = {}
    for t in e.top:
        d.setdefault(t.token, t.logprob)
    return d


def _logprobs(req: GenRequest, entries: list[TokenLogprob] | None) -> dict | None:
    """Chat: ``{"content": [...]}``; completions: the legacy lists."""
    if req.logprobs is None or entries is None:
        return None
    if req.kind == "chat":
        return {"content": [_lp_entry(e) for e in entries], "refusal": None}
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [_top_dict(e) for e in entries], "text_offset": [e.offset for e in entries]}


def _choice(req: GenRequest, text: str | None, entries, finish: str | None, stream: bool = False) -> dict:
    c = {"index": 0}
    if req.kind == "chat":
        if stream:
            c["delta"] = {} if text is None else {"content": text}
        else:
            c["message"] = {"role": "assistant", "content": text, "refusal": None}
    else:
        c["text"] = text or ""
    c["logprobs"] = _logprobs(req, entries)
    c["finish_reason"] = finish
    return c


# ==== the HTTP app =============================================================================

async def until_disconnect(receive) -> None:
    """Return when the client has gone. The request body is read already, so the next ASGI message is
    the disconnect (the server sends it as soon as the socket closes, whatever the response is doing)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream:
    """A ``text/event-stream`` response (an ASGI app) that notices a client's disconnect by itself.

    ``chunks`` (an async iterator of str) is sent while a watcher waits for the disconnect. When the
    response ends, whichever way, ``on_close()`` runs: after a disconnect at once, while the sender may
    still be waiting for a token the engine has not made yet (the engine then stops the job at its next
    token); after the last chunk it is a no-op. Starlette's own StreamingResponse watches only for
    servers that speak ASGI < 2.4 and otherwise relies on ``send`` raising, which uvicorn never does
    for a closed connection (it drops the data): a stream whose client left would hold the GPU until its
    last token.
    """

    def __init__(self, chunks, on_close):
        self.chunks, self.on_close = chunks, on_close

    async def _send_all(self, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache")]})
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk.encode("utf-8"), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send) -> None:
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(until_disconnect(receive))
        try:
            await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this task is cancelled (the server shuts down)
            self.on_close()
            for t in (sender, watcher):
                t.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            await self.chunks.aclose()  # its finally runs now, not whenever the garbage collector gets to it
        if not sender.cancelled() and (e := sender.exception()) is not None and not isinstance(e, OSError):
            raise e  # (OSError: the client is gone; ASGI 2.4 servers may raise it from send)


async def _json_body(request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise APIError(400, "the request body is not valid JSON", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", None, "invalid_json")
    return body


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def model_name(llm) -> str:
    src = str(llm.model.ckpt.source or "model")
    p = Path(src)
    return p.stem if p.suffix == ".gguf" else (p.name if p.is_absolute() else src)


class Server:
    """The starlette ``app`` and its :class:`Engine` for one loaded model (``llm``: an :class:`~llmgpu.LLM`)."""

    def __init__(self, llm, *, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 name: str | None = None):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        self.llm, self.api_key, self.name = llm, api_key or None, name or model_name(llm)
        self.engine = Engine(llm, max_queue)
        self.created, self.boot = int(time.time()), secrets.token_hex(4)
        routes = [Route("/", self.page), Route("/health", self.health), Route("/v1/models", self.models),
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/completions", self.completions, methods=["POST"])]
        self.app = Starlette(routes=routes, exception_handlers={APIError: self._api_error,
                                                                HTTPException: self._http_error})

    # ---- plumbing
    async def _api_error(self, request, e: APIError):
        from starlette.responses import JSONResponse
        return JSONResponse(e.body(), e.status, headers=e.headers)

    async def _http_error(self, request, e):
        return await self._api_error(request, APIError(e.status_code, f"{request.method} {request.url.path}: "
                                                       f"{e.detail}", None, None, "invalid_request_error"))

    def _auth(self, request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with the key given "
                                "to llmgpu serve --api-key", None, "invalid_api_key")

    # ---- endpoints
    async def page(self, request):
        from starlette.responses import HTMLResponse
        return HTMLResponse(resources.files("llmgpu").joinpath("static/chat.html").read_text(encoding="utf-8"))

    async def health(self, request):
        from starlette.responses import JSONResponse
        e = self.engine
        return JSONResponse({"status": "ok", "waiting": len(e.waiting), "busy": e.running is not None})

    async def models(self, request):
        from starlette.responses import JSONResponse
        self._auth(request)
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model",
                                                         "created": self.created, "owned_by": "llmgpu"}]})

    async def chat(self, request):
        return await self._generate(request, parse_chat)

    async def completions(self, request):
        return await self._generate(request, parse_completion)

    async def _generate(self, request, parse):
        from starlette.responses import JSONResponse
        self._auth(request)
        req = parse(await _json_body(request), self.llm)
        job = Job(req, asyncio.get_running_loop())
        self.engine.submit(job)
        kind = "chatcmpl" if req.kind == "chat" else "cmpl"
        head = {"id": f"{kind}-{self.boot}-{job.seq}",
                "object": "chat.completion" if req.kind == "chat" else "text_completion",
                "created": int(time.time()), "model": self.name, "system_fingerprint": f"llmgpu-{self.boot}"}
        if req.stream:
            return EventStream(self._stream(job, head), lambda: self.engine.cancel(job))
        return JSONResponse(await self._complete(request, job, head))

    async def _events(self, job: Job):
        """The job's pieces as (text, logprobs); raises APIError if generation failed."""
        while True:
            kind, text, lps = await job.events.get()
            if kind == "end":
                return
            if kind == "error":
                raise APIError(500, text, None, None, "server_error")
            yield text, lps

    async def _watch(self, request, job: Job) -> None:
        await until_disconnect(request.receive)
        self.engine.cancel(job)

    async def _complete(self, request, job: Job, head: dict) -> dict:
        watcher = asyncio.create_task(self._watch(request, job))
        texts, entries = [], []
        try:
            async for text, lps in self._events(job):
                texts.append(text)
                entries += lps or []
        finally:
            watcher.cancel()
            self.engine.cancel(job)  # a no-op once the job is done
        choice = _choice(job.req, "".join(texts), entries, FINISH[job.stats.finish_reason])
        return {**head, "choices": [choice], "usage": _usage(job)}

    async def _stream(self, job: Job, head: dict):
        req = job.req
        head = {**head, "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion"}
        extra = {"usage": None} if req.include_usage else {}
        try:  # EventStream cancels this generator when the client disconnects; the finally frees the GPU
            if req.kind == "chat":
                yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}], **extra})
            try:
                async for text, lps in self._events(job):
                    yield _sse({**head, "choices": [_choice(req, text, lps, None, True)], **extra})
            except APIError as e:
                yield _sse(e.body())
                return
            finish = FINISH[job.stats.finish_reason]
            yield _sse({**head, "choices": [_choice(req, None, None, finish, True)], **extra})
            if req.include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(job)})
            yield "data: [DONE]\n\n"
        finally:
            self.engine.cancel(job)


# ==== running it ===============================================================================

def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a clear error if the address is taken or invalid."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host") from None
    return sock


def _uvicorn(server: Server, log_level: str):
    import uvicorn
    return uvicorn.Server(uvicorn.Config(server.app, log_level=log_level, lifespan="off",
                                         timeout_graceful_shutdown=5))


class ServerThread:
    """Serve ``server`` from a background thread on ``host``:``port`` (0: a free port); a context manager.
    The socket listens before ``__enter__`` returns, so clients may connect at once."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.server, self.host = server, host
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.uv = _uvicorn(server, log_level)
        self.thread = threading.Thread(target=self.uv.run, kwargs={"sockets": [self.sock]}, name="llmgpu-http",
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.uv.should_exit = True
        self.thread.join(timeout=30)
        self.server.engine.close()
        self.sock.close()


def run(llm, sock: socket.socket, *, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
        announce=print) -> None:
    """Serve on the listening ``sock`` (see :func:`bind`) until Ctrl-C (the ``llmgpu serve`` command)."""
    server = Server(llm, api_key=api_key, max_queue=max_queue)
    host, port = sock.getsockname()[:2]
    where = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    announce(f"llmgpu serve: {server.name} on {llm.model.device_name}, context {llm.model.max_seq} tokens; "
             f"chat page {where}/ , OpenAI API {where}/v1{' (API key required)' if api_key else ''}")
    try:
        _uvicorn(server, "info").run(sockets=[sock])
    finally:
        server.engine.close()
        sock.close()
