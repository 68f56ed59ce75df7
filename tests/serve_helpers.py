"""`serve run` of the shipped CPU config on the session's head, and what Serve says of its replicas.

Shared by the serving tests: a fresh API key per run, the model's id and
deployment name, the context manager that runs the app, and the replica
listings (Ray's state API and `serve status`) the load tests poll.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time

import httpx
import yaml

from conftest import PY, ROOT

# A fresh key each run, so finding it anywhere on disk after the run means it leaked.
KEY = secrets.token_urlsafe(24)
MODEL = "smolray-tiny"
DEPLOYMENT = f"GuardedLLMServer:{MODEL}"  # the direct layout's one deployment


@contextlib.contextmanager
def serve_run(head, model: str, tmp, replicas: dict, deployments: list | None = None):
    """`serve run serving/tiny-cpu.yaml` against the session's head, with `model`
    as the one model and `replicas` as its replica settings; yields the URL
    and the config file it ran."""
    from smolray.cluster import _free_port

    cfg = yaml.safe_load((ROOT / "serving" / "tiny-cpu.yaml").read_text())
    port = _free_port()
    cfg["http_options"]["port"] = port
    app = cfg["applications"][0]
    app["args"]["models"][0]["source"] = model
    app["args"]["models"][0]["replicas"] = replicas
    if deployments:
        app["deployments"] = deployments
    # The key reaches the cluster the way docs/serving.md tells `serve deploy`
    # users: a 0600 file on the head, named in the config.
    key_file = tmp / "api_key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    app["args"]["api_key_file"] = str(key_file)
    app["runtime_env"] = {"env_vars": {"VLLM_CACHE_ROOT": str(tmp / "vllm")}}
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    serve = os.path.join(os.path.dirname(PY), "serve")
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([serve, "run", str(path), f"--address={head.address}"], env=head.env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420
    while True:
        assert proc.poll() is None, (tmp / "serve.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the app did not come up:\n" + (tmp / "serve.log").read_text()[-4000:]
        try:
            # /v1/models answers from the config as soon as the ingress is up;
            # a one-token completion proves an engine is loaded too.
            r = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                           json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    try:
        yield url, path
    finally:
        # Ctrl-C on `serve run` deletes the app and frees its CPUs for later tests.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([serve, "shutdown", "-y", f"--address={head.dashboard_url}"], env=head.env,
                       capture_output=True, timeout=120)
        log.close()


def _dashboard(head, path: str, **params) -> dict:
    """GET from the head's dashboard with its token: what `ray list` and `serve status` ask, without
    starting a CLI process on every poll (each would take a core for seconds while engines start)."""
    with open(head.env["RAY_AUTH_TOKEN_PATH"]) as f:
        token = f.read().strip()
    r = httpx.get(head.dashboard_url + path, params=params, headers={"Authorization": f"Bearer {token}"},
                  timeout=60)
    r.raise_for_status()
    return r.json()


def _deployments(head) -> dict:
    """The app's deployments as Serve reports them; while an update is applied there may be none yet."""
    apps = _dashboard(head, "/api/serve/applications/").get("applications") or {}
    return (apps.get("smolray") or {}).get("deployments") or {}


def deployment_name(head) -> str:
    """The model's deployment name, as Serve reports it."""
    names = [n for n in _deployments(head) if MODEL in n]
    assert len(names) == 1, names
    return names[0]


def live_replicas(head) -> dict[str, int]:
    """{actor id: pid} of the model's live replicas, from Ray's state API."""
    out = _dashboard(head, "/api/v0/actors", limit=1000, filter_keys="state", filter_predicates="=",
                     filter_values="ALIVE")
    return {a["actor_id"]: a["pid"] for a in out["data"]["result"]["result"]
            if a["class_name"].startswith("ServeReplica:smolray:") and MODEL in a["class_name"]}


def running_replicas(head) -> int:
    """How many of the model's replicas Serve reports RUNNING."""
    return sum(r.get("state") == "RUNNING" for name, d in _deployments(head).items() if MODEL in name
               for r in d.get("replicas") or [])
