"""`llmgpu serve` on the fake model: a real uvicorn server on 127.0.0.1 (a free port), talked to with
the official `openai` client (and raw HTTP where the client hides what is tested)."""
import gc
import json
import socket
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from llmgpu import LLM  # noqa: E402
from llmgpu.logprobs import log_softmax  # noqa: E402
from llmgpu.serve import Job, Server, ServerThread  # noqa: E402
from tests.fake_model import FakeModel  # noqa: E402

WAIT = 30  # seconds: an upper bound for waits on the server's state, never a sleep


class GatedModel(FakeModel):
    """Each decode takes a permit (the test hands them out), so a request can be held mid-generation."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.permits = threading.Semaphore(0)

    def decode(self, token_id):
        assert self.permits.acquire(timeout=WAIT), "the test never released this decode"
        return super().decode(token_id)

    def open(self):
        self.permits.release(10**6)


@pytest.fixture
def serve():
    started = []

    def start(model=None, asgi_spec=None, **kw):
        server = Server(LLM(model if model is not None else FakeModel(max_seq=1024)), **kw)
        if asgi_spec is not None:  # the server says it speaks this ASGI version (uvicorn 0.54 says 2.3)
            app = server.app

            async def speaking(scope, receive, send):
                await app({**scope, "asgi": {**scope.get("asgi", {}), "spec_version": asgi_spec}}, receive, send)
            server.app = speaking
        st = ServerThread(server)
        started.append(st.__enter__())
        return st

    yield start
    for st in started:
        if isinstance(st.server.llm.model, GatedModel):
            st.server.llm.model.open()
        st.__exit__()


def client(st, key="unused", **kw):
    return openai.OpenAI(base_url=st.url + "/v1", api_key=key, max_retries=0, timeout=WAIT, **kw)


def twin(model):
    """A fresh fake model with the same weights (what an uncached run answers)."""
    f = FakeModel(model.ckpt, max_seq=model.max_seq)
    f.bigram, f.context, f.script = model.bigram, model.context, model.script
    return LLM(f)


def raw(st, method, path, body=None, headers=None):
    """(status, headers, parsed JSON) of one plain HTTP request."""
    import urllib.error
    import urllib.request
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(st.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, json.loads(e.read())


USER = [{"role": "user", "content": "Hello"}]


# ==== answers ====================================================================================

def test_models_chat_and_usage(serve):
    m = FakeModel(max_seq=1024)
    m.say("Hello world! How are you?")
    st = serve(m)
    c = client(st)
    assert [x.id for x in c.models.list().data] == ["fake"]
    r = c.chat.completions.create(model="fake", messages=USER, temperature=0)
    assert r.object == "chat.completion" and r.model == "fake"
    ch = r.choices[0]
    assert ch.message.role == "assistant" and ch.message.content == "Hello world! How are you?"
    assert ch.finish_reason == "stop" and ch.logprobs is None
    n_prompt = len(LLM(m).encode(USER))
    answer_tokens = len(m.ckpt.tokenizer.encode("Hello world! How are you?", add_special_tokens=False).ids)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, answer_tokens + 1)  # + EOS
    assert r.usage.total_tokens == n_prompt + answer_tokens + 1
    r = c.chat.completions.create(model="x", messages=USER, temperature=0, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "Hello world"


def test_streaming_chat_equals_the_non_streamed_answer(serve, rng):
    m = FakeModel(seed=int(rng.integers(1000)), max_seq=1024)
    st = serve(m)
    c = client(st)
    n = int(rng.integers(10, 30))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"}]
    whole = c.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=n)
    chunks = list(c.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=n, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(chunks) > 4 and text == whole.choices[0].message.content
    assert text == twin(m).generate(msgs, temperature=0, max_tokens=n)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id != whole.id


def test_completions_raw_prompt_stop_and_sampling(serve, rng):
    m = FakeModel(seed=int(rng.integers(1000)), max_seq=1024)
    st = serve(m)
    c = client(st)
    ref = twin(m)
    r = c.completions.create(model="m", prompt="The quick brown", temperature=0, max_tokens=12)
    assert r.object == "text_completion"
    assert r.choices[0].text == ref.generate("The quick brown", chat_template=False, temperature=0, max_tokens=12)
    assert r.usage.prompt_tokens == len(ref.encode("The quick brown", chat_template=False))
    streamed = "".join(x.choices[0].text for x in c.completions.create(
        model="m", prompt="The quick brown", temperature=0, max_tokens=12, stream=True))
    assert streamed == r.choices[0].text
    ids = ref.encode("Hello", chat_template=False)
    assert c.completions.create(model="m", prompt=ids, temperature=0, max_tokens=5).choices[0].text == \
        ref.generate("Hello", chat_template=False, temperature=0, max_tokens=5)
    seed = int(rng.integers(2**31))
    kw = dict(temperature=0.9, top_p=0.9, seed=seed, max_tokens=10)
    a = c.completions.create(model="m", prompt="Once", extra_body={"top_k": 7, "min_p": 0.01}, **kw)
    assert a.choices[0].text == ref.generate("Once", chat_template=False, top_k=7, min_p=0.01, **kw)

    m.say("Hello world! How are you?")
    for stop, want in (("How", "Hello world! "), (["you", "world"], "Hello "), ("absent", None)):
        for stream in (False, True):
            if stream:
                out = list(c.chat.completions.create(model="m", messages=USER, temperature=0, stop=stop,
                                                     stream=True))
                text = "".join(x.choices[0].delta.content or "" for x in out)
                finish = out[-1].choices[0].finish_reason
            else:
                out = c.chat.completions.create(model="m", messages=USER, temperature=0, stop=stop)
                text, finish = out.choices[0].message.content, out.choices[0].finish_reason
            assert text == (want or "Hello world! How are you?") and finish == "stop"


def test_logprobs_match_the_models_logits(serve, rng):
    m = FakeModel(seed=int(rng.integers(1000)), max_seq=1024)
    st = serve(m)
    c = client(st)
    k, seed = int(rng.integers(1, 6)), int(rng.integers(2**31))
    r = c.chat.completions.create(model="m", messages=USER, temperature=0.8, seed=seed,
                                  max_tokens=12, logprobs=True, top_logprobs=k)
    content = r.choices[0].logprobs.content
    tok = m.ckpt.tokenizer
    ref = twin(m)
    prompt = ref.encode(USER)
    # the token ids (OpenAI's answer has only their text): the same sampling through the Python API
    ids = [e.token_id for e in ref.generate(USER, temperature=0.8, seed=seed, max_tokens=12, logprobs=0).logprobs]
    assert [e.token for e in content] == [tok.decode([i], skip_special_tokens=False) for i in ids]
    assert tok.decode(ids) == r.choices[0].message.content
    lp = log_softmax(ref.logits(prompt + ids))[len(prompt) - 1:]
    for i, e in enumerate(content):
        assert e.logprob == pytest.approx(lp[i, ids[i]], abs=1e-6)
        assert e.bytes == list(e.token.encode())
        assert [t.logprob for t in e.top_logprobs] == pytest.approx(np.sort(lp[i])[::-1][:k].tolist(), abs=1e-6)
    chunks = list(c.chat.completions.create(model="m", messages=USER, temperature=0, max_tokens=8, logprobs=True,
                                            top_logprobs=2, stream=True))
    streamed = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    w = c.chat.completions.create(model="m", messages=USER, temperature=0, max_tokens=8, logprobs=True,
                                  top_logprobs=2)
    whole = w.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole]
    assert [e.token for e in whole] == [e.token for e in ref.generate(USER, temperature=0, max_tokens=8,
                                                                      logprobs=2).logprobs]
    cr = c.completions.create(model="m", prompt="Hello", temperature=0, max_tokens=6, logprobs=3)
    lpc = cr.choices[0].logprobs
    pids = ref.encode("Hello", chat_template=False)
    api = ref.generate("Hello", chat_template=False, temperature=0, max_tokens=6, logprobs=3).logprobs
    cids = [e.token_id for e in api]
    assert tok.decode(cids) == cr.choices[0].text and lpc.tokens == [e.token for e in api]
    assert lpc.text_offset == [e.offset for e in api] and lpc.text_offset == sorted(lpc.text_offset)
    row = log_softmax(ref.logits(pids + cids))[len(pids) - 1:]
    assert lpc.token_logprobs == pytest.approx([row[i, t] for i, t in enumerate(cids)], abs=1e-6)
    for i, (d, e) in enumerate(zip(lpc.top_logprobs, api)):  # keyed by text: equal texts keep the likeliest
        assert d == {t.token: t.logprob for t in reversed(e.top)} and max(d.values()) == pytest.approx(row[i].max())


# ==== errors =====================================================================================

@pytest.mark.parametrize("extra,param", [
    (dict(n=2), "n"), (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (dict(response_format={"type": "json_object"}), "response_format"), (dict(frequency_penalty=0.5),
                                                                          "frequency_penalty"),
    (dict(presence_penalty=-1), "presence_penalty"), (dict(logit_bias={"5": 10}), "logit_bias"),
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
    (dict(top_logprobs=3), "top_logprobs"), (dict(logprobs=True, top_logprobs=99), "top_logprobs"),
    (dict(stop=[1, 2]), "stop"), (dict(seed="x"), "seed"),
    (dict(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
    (dict(messages=[{"role": "user", "content": "Once upon a time " * 200}]), "messages"),
])
def test_bad_requests_get_an_openai_400_naming_the_field(serve, extra, param):
    st = serve(FakeModel(max_seq=256))
    c = client(st)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", **{"messages": USER, **extra})
    err = e.value.response.json()["error"]
    assert err["param"] == param and param.split("[")[0] in err["message"] and err["type"] == "invalid_request_error"
    assert st.server.llm.model.prefills == []  # refused before any work


def test_malformed_bodies_and_unknown_routes(serve):
    st = serve()
    assert raw(st, "POST", "/v1/chat/completions", b"{not json")[0] == 400
    status, _, body = raw(st, "POST", "/v1/chat/completions", [1, 2])
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, _, body = raw(st, "POST", "/v1/completions", {"prompt": ["a", "b"]})
    assert status == 400 and body["error"]["param"] == "prompt"
    status, _, body = raw(st, "GET", "/v1/nothing")
    assert status == 404 and "/v1/nothing" in body["error"]["message"]
    assert raw(st, "GET", "/v1/chat/completions")[0] == 405


def test_api_key(serve):
    m = FakeModel()
    m.say("ok")
    st = serve(m, api_key="s3cret")
    with pytest.raises(openai.AuthenticationError) as e:
        client(st, key="wrong").chat.completions.create(model="m", messages=USER)
    assert e.value.response.json()["error"]["code"] == "invalid_api_key"
    for path in ("/v1/models", "/v1/chat/completions"):
        assert raw(st, "POST" if "chat" in path else "GET", path, {"messages": USER})[0] == 401
    assert client(st, key="s3cret").chat.completions.create(model="m", messages=USER).choices[0].message.content == "ok"
    assert m.prefills == [len(LLM(m).encode(USER))]  # the refused requests never reached the model


# ==== one GPU, many clients ======================================================================

def _hold_one_running(st, pool, c):
    """Start a request that the gated model holds at its first decode; return its future."""
    eng = st.server.engine
    f = pool.submit(c.chat.completions.create, model="m", messages=USER, temperature=0, max_tokens=3)
    assert eng.wait_until(lambda: eng.running is not None, WAIT)
    return f


def test_full_queue_answers_429_with_retry_after_and_fifo_order(serve):
    m = GatedModel(max_seq=1024)
    st = serve(m, max_queue=3)
    eng, c = st.server.engine, client(st)
    with ThreadPoolExecutor(4) as pool:
        first = _hold_one_running(st, pool, c)
        waiting = []
        for i in range(3):  # one at a time, so their arrival order is known
            waiting.append(pool.submit(c.completions.create, model="m", prompt=f"prompt {i}", temperature=0,
                                       max_tokens=4))
            assert eng.wait_until(lambda: len(eng.waiting) == i + 1, WAIT)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="m", messages=USER)
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.response.json()["error"]["code"] == "rate_limit_exceeded"
        m.open()
        results = [f.result(timeout=WAIT) for f in [first] + waiting]
    seqs = [int(r.id.rsplit("-", 1)[1]) for r in results]
    assert seqs == sorted(seqs) and list(eng.started) == seqs  # served in the order they arrived
    for i, r in enumerate(results[1:]):
        assert r.choices[0].text == twin(m).generate(f"prompt {i}", chat_template=False, temperature=0,
                                                     max_tokens=4)


@pytest.mark.parametrize("asgi_spec", [None, "2.4"])  # 2.4: starlette's StreamingResponse would stop watching
def test_a_client_that_disconnects_mid_stream_frees_the_gpu(serve, asgi_spec):
    m = GatedModel(max_seq=1024)
    m.say("word " * 100)
    st = serve(m, asgi_spec=asgi_spec)
    eng = st.server.engine
    m.permits.release(3)  # prefill + 3 decodes: 4 tokens, then the 4th decode waits
    body = json.dumps({"model": "m", "messages": USER, "temperature": 0, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", st.port), timeout=WAIT)
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    data = b""
    while data.count(b"data: ") < 5:  # the role chunk and 4 tokens
        got = sock.recv(65536)
        assert got, "the server closed the stream early"
        data += got
    texts = [json.loads(line[6:])["choices"][0]["delta"].get("content", "")
             for line in data.decode().split("\r\n") if line.startswith("data: {")]
    assert "".join(texts) == m.ckpt.tokenizer.decode(m.script[:4])
    job = eng.running
    sock.close()  # mid-stream, while the engine waits inside its 4th decode: no token is sent meanwhile
    assert eng.wait_until(lambda: job.cancel.is_set(), WAIT)  # the server noticed, and the engine's state says so
    assert eng.running is job and m.decodes == 3  # still held
    m.open()
    assert eng.wait_until(lambda: eng.running is None, WAIT)
    assert m.decodes == 4 and job.stats.finish_reason == "cancelled"  # the held decode, then stopped
    assert client(st).chat.completions.create(model="m", messages=USER, temperature=0, max_tokens=2).choices[0] \
        .message.content == m.ckpt.tokenizer.decode(m.script[:2])


def test_a_disconnected_non_streaming_request_is_stopped_or_dropped(serve):
    m = GatedModel(max_seq=1024)
    st = serve(m)
    eng = st.server.engine
    body = json.dumps({"model": "m", "messages": USER, "max_tokens": 50}).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    socks = [socket.create_connection(("127.0.0.1", st.port), timeout=WAIT) for _ in range(2)]
    socks[0].sendall(req)
    assert eng.wait_until(lambda: eng.running is not None, WAIT)
    running = eng.running
    socks[1].sendall(req)
    assert eng.wait_until(lambda: len(eng.waiting) == 1, WAIT)
    for s in socks[::-1]:
        s.close()
    assert eng.wait_until(lambda: not eng.waiting and running.cancel.is_set(), WAIT)
    m.open()
    assert eng.wait_until(lambda: eng.running is None, WAIT)
    assert m.decodes <= 1 and len(m.prefills) == 1 and len(eng.started) == 1  # the waiting one never ran


def test_the_next_turn_reuses_the_kv_cache(serve, rng):
    m = FakeModel(seed=int(rng.integers(1000)), max_seq=1024)
    st = serve(m)
    c = client(st)
    msgs = [{"role": "user", "content": "Hello world!"}]
    r1 = c.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=8)
    assert r1.usage.prompt_tokens_details.cached_tokens == 0
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "How are you today?"}]
    r2 = c.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=8)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens and m.prefills[-1] == r2.usage.prompt_tokens - cached
    assert r2.choices[0].message.content == twin(m).generate(msgs, temperature=0, max_tokens=8)
    r3 = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "café"}], temperature=0,
                                   max_tokens=8)
    assert r3.usage.prompt_tokens_details.cached_tokens < r3.usage.prompt_tokens
    assert r3.choices[0].message.content == twin(m).generate([{"role": "user", "content": "café"}],
                                                             temperature=0, max_tokens=8)


def test_soak_200_requests_from_8_clients(serve):
    m = FakeModel(max_seq=1024)
    m.say("Hello world! How are you?")
    st = serve(m, max_queue=8)
    eng = st.server.engine
    clients = [client(st) for _ in range(8)]

    def one_client(i, n):
        out = []
        for j in range(n):
            if (i + j) % 2:
                r = clients[i].chat.completions.create(model="m", messages=USER, temperature=0)
                out.append((r.id, r.choices[0].message.content, r.choices[0].finish_reason))
            else:
                chunks = list(clients[i].chat.completions.create(model="m", messages=USER, temperature=0,
                                                                 stream=True))
                out.append((chunks[0].id, "".join(ch.choices[0].delta.content or "" for ch in chunks),
                            chunks[-1].choices[0].finish_reason))
        return out

    def round_(n):
        with ThreadPoolExecutor(8) as pool:
            return [x for f in [pool.submit(one_client, i, n) for i in range(8)] for x in f.result(timeout=300)]

    tracemalloc.start()
    try:
        answers = round_(5)  # warm up (first-use allocations)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        answers += round_(20)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(answers) == 200
    assert all(a[1:] == ("Hello world! How are you?", "stop") for a in answers)  # every one complete
    seqs = sorted(int(a[0].rsplit("-", 1)[1]) for a in answers)
    assert seqs == list(range(1, 201))  # none lost, none doubled
    assert list(eng.started) == seqs  # served in the order of arrival
    assert not eng.waiting and eng.running is None
    assert sum(isinstance(o, Job) for o in gc.get_objects()) == 0  # no request's state outlives it
    assert grown < 320 * 1024, f"memory grew by {grown} bytes over 160 requests"  # ~80 kB seen


# ==== the command ================================================================================

def test_cli_serve_binds_before_loading_and_passes_options(monkeypatch, capsys):
    from llmgpu import cli
    from llmgpu import serve as serve_mod
    from tests.fake_model import install
    cls = install(monkeypatch)
    calls = []

    def fake_run(llm, sock, **kw):
        calls.append((llm, sock.getsockname(), kw))
        sock.close()

    monkeypatch.setattr(serve_mod, "run", fake_run)
    monkeypatch.setenv("LLMGPU_API_KEY", "from-env")
    assert cli.main(["serve", "--port", "0", "--ctx", "100", "--queue", "5"]) == 0
    llm, addr, kw = calls[0]
    assert addr[0] == "127.0.0.1" and addr[1] > 0 and llm.model.max_seq == 100  # localhost unless told
    assert kw["api_key"] == "from-env" and kw["max_queue"] == 5
    assert cli.main(["serve", "--port", "0", "--api-key", "flag"]) == 0 and calls[1][2]["api_key"] == "flag"
    capsys.readouterr()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    for bad in (["--port", "70000"], ["--queue", "0"], ["--ctx", "0"]):
        assert cli.main(["serve", *bad]) == 2
        assert capsys.readouterr().err.startswith("llmgpu: error: --" + bad[0][2:])
    assert len(cls.loads) == 2 and len(calls) == 2  # the failures never loaded the model


def test_the_chat_page_is_self_contained_and_uses_the_api(serve):
    import re
    import urllib.request
    st = serve(api_key="k")  # the page itself is public; its requests carry the key the user types
    with urllib.request.urlopen(st.url + "/", timeout=WAIT) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/html")
        html = r.read().decode()
    assert "/v1/chat/completions" in html and "stream: true" in html and "Authorization" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from elsewhere: offline
    assert raw(st, "GET", "/v1/models")[0] == 401
