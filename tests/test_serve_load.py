"""The endpoint under load, and under the loss of an engine: two replicas behind one `serve run`.

A `long` test (`make test-long`): the second `serve run` and its two
engines, the load and the replacement engine take about three minutes on
2 cores, which `make test` has no room for (docs/testing.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from conftest import LONG, PY
from test_serve import KEY, MODEL, serve_run

openai = pytest.importorskip("openai")
pytestmark = LONG

# Two engines, each taking what the shipped config lets one take.
FLEET = {"min_replicas": 2, "max_replicas": 2, "max_ongoing_requests": 64, "max_queued_requests": 64}
TOKENS = 32  # per request: every answer is exactly this long (ignore_eos)


@pytest.fixture(scope="module")
def fleet(head, init_model, tmp_path_factory):
    with serve_run(head, init_model, tmp_path_factory.mktemp("fleet"), FLEET) as url:
        yield url


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


def _replicas(head) -> dict[str, int]:
    """{actor id: pid} of the model's live replicas, from Ray's state API."""
    ray = os.path.join(os.path.dirname(PY), "ray")
    out = subprocess.run([ray, "list", "actors", f"--address={head.dashboard_url}", "--format=json",
                          "--filter", "state=ALIVE", "--limit=1000"],
                         env=head.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {a["actor_id"]: a["pid"] for a in json.loads(out.stdout)
            if a["class_name"].startswith("ServeReplica:smolray:") and MODEL in a["class_name"]}


def _running(head) -> int:
    """How many of the model's replicas Serve reports RUNNING (`serve status`)."""
    serve = os.path.join(os.path.dirname(PY), "serve")
    out = subprocess.run([serve, "status", f"--address={head.dashboard_url}"], env=head.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    deployments = yaml.safe_load(out.stdout)["applications"]["smolray"]["deployments"]
    return next(d.get("replica_states", {}).get("RUNNING", 0) for name, d in deployments.items() if MODEL in name)


def test_losing_a_replica_under_load_fails_no_retried_request(fleet, head):
    """16 clients stream without pause; one engine's replica is SIGKILLed once 32 requests are done.

    Clients that retry what docs/serving.md calls safe to retry lose nothing;
    the first-attempt failures (what a client without retries would have
    seen) are counted and reported, not hidden. The load runs on the
    surviving engine for 32 more requests; then Serve's new replica must be
    RUNNING, and 16 more streams succeed.
    """
    before = _replicas(head)
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
        now, running = _replicas(head), _running(head)
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
