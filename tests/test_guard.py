"""The endpoint's guard on a real ASGI stack (FastAPI + httpx), without engines: key, limits, deadlines."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from smolray.recipe import RecipeError
from smolray.serve.config import Limits
from smolray.serve.guard import Digest, Guard, load_key

KEY = "k3y-Abcdefghijklmnopqrstuvwxyz-0123"


def _app(limits: Limits) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()  # the route still sees the body the guard read
        await asyncio.sleep(body.get("sleep", 0))
        return JSONResponse({"echo": body})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        async def events():
            for i in range(10_000):
                yield f"data: {i}\n\n"
                await asyncio.sleep(0.05)
        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_middleware(Guard, digest=Digest(KEY), limits=limits)
    return app


def _post(app, path, body=None, key=KEY, **kw):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
            return await c.post(path, json=body, headers=headers, **kw)
    return asyncio.run(go())


def test_requests_within_the_limits_pass_with_their_body():
    r = _post(_app(Limits()), "/v1/completions", {"prompt": "hi", "n": 4})
    assert r.status_code == 200 and r.json() == {"echo": {"prompt": "hi", "n": 4}}


def test_each_abuse_gets_its_4xx_naming_the_limit():
    app = _app(Limits(max_n=4, max_body_bytes=1000))
    cases = [
        ("wrong key", dict(body={"prompt": "x"}, key="nope"), 401, "invalid_api_key"),
        ("n", dict(body={"prompt": "x", "n": 5}), 400, "limits.max_n"),
        ("best_of", dict(body={"prompt": "x", "best_of": 64}), 400, "limits.max_n"),
        ("beam search", dict(body={"prompt": "x", "use_beam_search": True}), 400, "limits.allow_beam_search"),
        ("declared body", dict(body={"prompt": "x" * 2000}), 413, "limits.max_body_bytes"),
        # No Content-Length: the guard counts what arrives and stops at the limit.
        ("chunked body", dict(content=_chunks(b"x" * 3000)), 413, "limits.max_body_bytes"),
        ("timeout header", dict(body={"prompt": "x"}, headers={"x-request-timeout-seconds": "1e9"}), 400,
         "x-request-timeout-seconds"),
        ("disconnect header", dict(body={"prompt": "x"}, headers={"x-request-disconnect-disabled": "?1"}), 400,
         "x-request-disconnect-disabled"),
    ]
    for what, kw, status, words in cases:
        r = _post(app, "/v1/completions", **kw)
        assert r.status_code == status, (what, r.status_code, r.text)
        err = r.json()["error"]
        assert words in err["message"] or words == err["code"], (what, err)


async def _chunks(data: bytes):
    for i in range(0, len(data), 500):
        yield data[i:i + 500]


def test_a_slow_answer_gets_408_and_a_long_stream_ends_with_an_error_event():
    app = _app(Limits(request_timeout_s=0.5))
    t = time.monotonic()
    r = _post(app, "/v1/completions", {"prompt": "x", "sleep": 30})
    # The route is cancelled at the deadline, not waited for.
    assert time.monotonic() - t < 10
    assert r.status_code == 408 and "limits.request_timeout_s" in r.json()["error"]["message"]
    r = _post(app, "/v1/chat/completions", {"messages": []})
    events = [e for e in r.text.split("\n\n") if e]
    # Some chunks, then the deadline's error event, and no more: the route's stream was closed.
    assert 2 <= len(events) < 30, len(events)
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == 408


def test_weak_and_exposed_keys_are_refused_where_the_app_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("K", "short-key")
    with pytest.raises(RecipeError, match=r"api_key_env=K: the key is too weak \(9 characters"):
        load_key("K", None)
    monkeypatch.setenv("K", "a" * 40)
    with pytest.raises(RecipeError, match="1 distinct"):
        load_key("K", None)
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(0o644)
    with pytest.raises(RecipeError, match=r"readable by others \(mode 0644\); chmod 600 it"):
        load_key("K", str(path))
    path.chmod(0o600)
    assert load_key("K", str(path)) == KEY
    with pytest.raises(RecipeError, match="give an absolute path"):
        load_key("K", "key")
    with pytest.raises(RecipeError, match="cannot read it where the app is built"):
        load_key("K", str(tmp_path / "missing"))


def test_the_digest_is_salted_and_matches_only_the_key():
    a, b = Digest(KEY), Digest(KEY)
    assert a.value != b.value and a.matches(KEY) and b.matches(KEY)
    assert not a.matches(KEY[:-1]) and not a.matches("") and KEY.encode() not in a.value


def test_a_key_passed_in_the_apps_runtime_env_is_refused(ray_cluster):
    ray = ray_cluster

    # Where Serve builds an app: a Ray task with the application's runtime_env.
    @ray.remote(runtime_env={"env_vars": {"SMOLRAY_API_KEY": KEY}})
    def build() -> str:
        from smolray.serve.guard import load_key

        try:
            return load_key("SMOLRAY_API_KEY", None)
        except RecipeError as e:
            return str(e)

    said = ray.get(build.remote())
    assert "is set in the application's runtime_env.env_vars" in said and "api_key_file" in said, said
