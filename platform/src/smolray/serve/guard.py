"""What a request must pass before any engine sees it: the key, then the limits.

The key is read once, where Serve builds the app (`load_key`), and only a
salted digest of it travels with the deployment. `Guard` is the ingress
middleware: a bearer key that hashes to that digest, a bounded body, no
sampling fan-out beyond `limits.max_n`, no beam search, none of the Serve
headers that let a client lift the timeout or keep generating after it
hangs up, and a deadline on the whole response, stream included.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import stat

from smolray.recipe import RecipeError

# A key must be long and varied enough that guessing it, online or from its
# digest, is hopeless: `secrets.token_urlsafe(24)` gives 32 characters.
MIN_KEY_CHARS = 24
MIN_DISTINCT_CHARS = 12

# Ray Serve's proxy honours these per request: one lifts the proxy's
# timeout, the other keeps a generation running after the client is gone.
_OVERRIDE_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")
_GENERATE = ("/v1/completions", "/v1/chat/completions")


def load_key(api_key_env: str, api_key_file: str | None) -> str:
    """The key from its file (preferred on clusters) or its environment variable; weak keys refused."""
    if api_key_file:
        path = os.path.expanduser(api_key_file)
        if not os.path.isabs(path):
            raise RecipeError(f"api_key_file={api_key_file!r}: give an absolute path (or ~/...) on "
                              "the node that builds the app (the head)")
        try:
            st = os.stat(path)
            with open(path) as f:
                key = f.read().strip()
        except OSError as e:
            raise RecipeError(f"api_key_file={api_key_file!r}: cannot read it where the app is built "
                              f"({e.strerror}); write the key there with mode 0600") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise RecipeError(f"api_key_file={api_key_file!r} is readable by others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        where = f"api_key_file={api_key_file!r}"
    else:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise RecipeError(
                f"api_key_env={api_key_env}: that environment variable is empty where the app is "
                f"built; export {api_key_env}=<key> before `serve run`, or, on a cluster, write the "
                "key to a 0600 file on the head and name it in api_key_file")
        _refuse_runtime_env_key(api_key_env)
        where = f"api_key_env={api_key_env}"
    if len(key) < MIN_KEY_CHARS or len(set(key)) < MIN_DISTINCT_CHARS:
        raise RecipeError(
            f"{where}: the key is too weak ({len(key)} characters, {len(set(key))} distinct; "
            f"at least {MIN_KEY_CHARS} and {MIN_DISTINCT_CHARS} needed); make one with "
            "python -c \"import secrets; print(secrets.token_urlsafe(24))\"")
    return key


def _refuse_runtime_env_key(api_key_env: str) -> None:
    """A key under the app's runtime_env.env_vars is in Ray's logs and in `serve config`."""
    import ray

    if not ray.is_initialized():  # not inside Ray (a plain import): nothing to check
        return
    env_vars = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    if api_key_env in env_vars:
        raise RecipeError(
            f"api_key_env={api_key_env} is set in the application's runtime_env.env_vars, which "
            "Ray's runtime-env agent writes to its log and `serve config` prints; change that key "
            "(it has leaked), drop it from runtime_env, and put the new one in a 0600 file on the "
            "head named by api_key_file")


class Digest:
    """A salted SHA-256 of the key: what the deployment carries instead of the key."""

    def __init__(self, key: str):
        self.salt = secrets.token_bytes(16)
        self.value = self._of(key.encode())

    def _of(self, token: bytes) -> bytes:
        return hmac.new(self.salt, token, hashlib.sha256).digest()

    def matches(self, token: str) -> bool:
        # Compare digests in constant time: no timing clue about the key.
        return hmac.compare_digest(self._of(token.encode()), self.value)


def _error(status: int, message: str, code, param: str | None = None, headers=None):
    from starlette.responses import JSONResponse

    return JSONResponse(status_code=status, headers=headers, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": code}})


class Guard:
    """The ingress's outermost ASGI middleware (limits: a serve.config.Limits).

    Plain ASGI rather than Starlette's BaseHTTPMiddleware: the route runs
    inside this call, so the deadline cancels it (and with it the engine's
    generation) instead of waiting for it, and no extra task relays each
    streamed chunk.
    """

    def __init__(self, app, digest: Digest, limits):
        self.app, self.digest, self.limits = app, digest, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refused = self._check_headers(headers)
        if refused is None and scope["method"] == "POST":
            body, refused = await _read_body(headers, receive, self.limits.max_body_bytes)
            if refused is None and scope["path"] in _GENERATE:
                refused = _check_sampling(body, self.limits)
            receive = _replay(body, receive)
        if refused is not None:
            return await refused(scope, receive, send)
        await self._with_deadline(scope, receive, send)

    def _check_headers(self, headers: dict[str, str]):
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.digest.matches(token.strip()):
            return _error(401, "Incorrect API key" if token else
                          "Missing API key: send 'Authorization: Bearer <key>'",
                          "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        for name in _OVERRIDE_HEADERS:
            if name in headers:
                return _error(400, f"header {name} is not accepted here: the server sets its own "
                              f"timeout ({self.limits.request_timeout_s:g} s) and stops generating "
                              "when a client disconnects", "header_not_allowed", name)
        return None

    async def _with_deadline(self, scope, receive, send):
        """The route within limits.request_timeout_s: 408 before the first byte, a closing error event after."""
        timeout_s = self.limits.request_timeout_s
        state = {"started": False, "done": False, "stream": False}

        async def tracked(message):
            if message["type"] == "http.response.start":
                state["started"] = True
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                state["stream"] = ctype.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["done"] = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracked), timeout_s)
        except asyncio.TimeoutError:
            message = f"the request ran past this server's {timeout_s:g} s limit (limits.request_timeout_s)"
            if not state["started"]:
                await _error(408, message, "timeout")(scope, receive, send)
            elif not state["done"]:
                # Headers are gone already: end the stream with an error event
                # the client can read (the route, and its generation, are cancelled).
                event = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": 408}}
                tail = f"data: {json.dumps(event)}\n\n".encode() if state["stream"] else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _read_body(headers: dict[str, str], receive, limit: int):
    """At most `limit` bytes of body, or a 413 (checked on the declared length first)."""
    too_big = _error(413, f"request body over {limit} bytes (limits.max_body_bytes)", "body_too_large")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"", too_big
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left
            return b"", _error(400, "the client disconnected before sending its body", "disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", too_big
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A receive that hands the route the body read here, then the client's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _check_sampling(body: bytes, limits):
    try:
        req = json.loads(body)
    except ValueError:
        return None  # the route answers malformed JSON with its own 400
    if not isinstance(req, dict):
        return None
    for field in ("n", "best_of"):
        value = req.get(field)
        if isinstance(value, int) and value > limits.max_n:
            return _error(400, f"{field}={value} is above this server's limit of {limits.max_n} "
                          "(limits.max_n); send several requests instead", "limit_exceeded", field)
    if req.get("use_beam_search") and not limits.allow_beam_search:
        return _error(400, "use_beam_search is off on this server (limits.allow_beam_search): beam "
                      "search holds a batch of sequences per request", "limit_exceeded", "use_beam_search")
    return None
