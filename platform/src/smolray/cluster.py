"""Getting a Ray cluster: join the one a job runs on, or own a local head.

`LocalHead` starts `ray start --head --block` in a process session of its
own with a private temp dir and ports, and stops exactly that session: it
never runs `ray stop`, which would kill every Ray process on the machine.

A cluster smolray starts for itself (`LocalHead`, or `connect()` with no
cluster to join) gets a token of its own, written into its temp dir and
handed to every process it runs through `RAY_AUTH_TOKEN_PATH`; the user's
`~/.ray/auth_token` is never read or written. Joining an existing cluster
keeps Ray's normal token lookup.

Such a cluster is also loopback-only: every port it opens (GCS, raylet,
workers, agents, dashboard, metrics) listens on 127.0.0.1, so nothing off
the machine can even reach the token check. `LocalHead.ports` lists them.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import ray

# Variables that would point our own cluster's processes at another cluster
# or another token; LocalHead and start_local drop them.
_FOREIGN = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")

# Ray 2.60 turns `--node-ip-address=127.0.0.1` into the machine's address
# and binds GCS, raylet and workers to every interface. Its single-machine
# mode (the default on macOS and Windows, off on Linux) keeps the node on
# 127.0.0.1, and every server Ray starts binds there. No other machine can
# join such a cluster, which is what a local head is.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def private_token(directory: str) -> str:
    """Write a fresh 256-bit token, readable by this user only; returns its path."""
    path = os.path.join(directory, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def private_env(directory: str) -> dict[str, str]:
    """The variables that tie a process to a cluster we own: token auth, our token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": private_token(directory)}


# A node role is a custom resource every node of that kind declares, one
# unit each (cluster.yaml: train_node, data_node, serve_node). Work asks for
# a thousandth of it: the role picks the node, CPUs and GPUs still decide
# how many fit there.
ROLE_SHARE = 0.001


def role_resources(role: str | None) -> dict[str, float]:
    """The custom resources to request for work pinned to a node role (none when off)."""
    return {role: ROLE_SHARE} if role else {}


def role_args(role: str | None) -> dict:
    """Ray remote args (tasks, Ray Data operators) pinning work to a node role (none when off)."""
    return {"resources": role_resources(role)} if role else {}


def check_role(role: str | None, field: str) -> None:
    """Warn, on the driver, when no live node has the role yet: the work would wait."""
    if not role or not ray.is_initialized():
        return
    if ray.cluster_resources().get(role, 0) <= 0:
        print(f"{field}={role}: no node of this cluster declares the resource {role!r} yet, so this "
              "work waits until the autoscaler adds one (cluster.yaml's node types declare it). On "
              f"a single machine, set {field}=null.", file=sys.stderr, flush=True)


def connect(min_cpus: int = 8) -> None:
    """Join the cluster of `ray job submit` (or RAY_ADDRESS); else start a local one.

    A local cluster gets more logical CPUs than cores: trainer workers book
    whole CPUs, and Ray Data's read tasks need CPUs of their own or the job
    hangs behind them.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # A cluster of our own: never join one another process left running,
    # never share /tmp/ray or ~/.ray/auth_token with other users or runs.
    home = tempfile.mkdtemp(prefix="smolray-ray-")
    atexit.register(_shutdown_and_remove, home)
    # The dashboard serves the state API, which Ray Train's placement-group
    # cleaner polls; without it every trainer logs a warning each second.
    start_local(home, num_cpus=max(min_cpus, os.cpu_count() or 1), include_dashboard=True)


def ray_temp_dir(home: str) -> str:
    """Where Ray keeps a cluster's sessions, logs and job folders, inside our private `home`.

    Ray makes its temp dir and the session, logs and job folders in it
    world-writable (0777, no sticky bit): anyone could read the logs or swap
    an unpacked job folder for one of their own. Inside a 0700 folder of
    ours (tempfile.mkdtemp) no other user can reach any of them.
    """
    return os.path.join(home, "ray")


def start_local(home: str, num_cpus: int, **init_kwargs) -> None:
    """`ray.init` a new loopback-only local cluster in the private folder `home`, with a token of its own there."""
    for key in _FOREIGN:
        os.environ.pop(key, None)
    # The processes ray.init starts read the variable; this one read it when
    # ray was imported, so its copy is set too (private in Ray 2.60).
    os.environ.update(LOOPBACK)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    os.chmod(home, 0o700)
    # Only the token path: with RAY_AUTH_MODE unset, ray.init turns token
    # auth on for the cluster it starts (and refreshes its cached config,
    # which a variable set now would miss) and finds our token there.
    # Workers inherit the variable from the raylet.
    os.environ["RAY_AUTH_TOKEN_PATH"] = private_token(home)
    os.environ.update(_metric_ports())
    ray.init(address="local", num_cpus=num_cpus, _temp_dir=ray_temp_dir(home), **init_kwargs)


def _shutdown_and_remove(home: str) -> None:
    # Ray's own atexit shutdown was registered at import, so it would run
    # after this one: shut down first, then remove what the cluster wrote.
    ray.shutdown()
    shutil.rmtree(home, ignore_errors=True)


def _metric_ports() -> dict[str, str]:
    """The autoscaler's and dashboard's Prometheus ports, which have no flag, only these
    variables: left at their defaults (44217, 44227), two clusters on one machine collide."""
    return {"AUTOSCALER_METRIC_PORT": str(_free_port()), "DASHBOARD_METRIC_PORT": str(_free_port())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    """A private single-node Ray cluster with a job server, for demos and tests.

    `loopback=False` lets other machines reach it (and join it): its ports
    then listen on every interface, guarded by the token alone.
    """

    def __init__(self, num_cpus: int = 8, env: dict[str, str] | None = None, loopback: bool = True):
        self.num_cpus = num_cpus
        # Our private folder (0700): the token, the head's log and Ray's temp dir.
        self.home = tempfile.mkdtemp(prefix="smolray-head-")
        self.temp_dir = ray_temp_dir(self.home)
        self.port = _free_port()
        self.dashboard_port = _free_port()
        # Every fixed default port too: a second head on the machine (a test
        # cluster, a leftover) would otherwise keep this one's job agent from
        # binding, and no job could ever be submitted.
        self.other_ports = {flag: _free_port() for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "node-manager-port", "object-manager-port",
            "ray-client-server-port")}
        # Every client we run (`ray job submit`, `serve run`, status calls)
        # gets this env: our token, no address of some other cluster, and
        # metric ports of its own.
        base = {k: v for k, v in os.environ.items() if k not in _FOREIGN and k not in LOOPBACK}
        self.metric_ports = _metric_ports()
        self.env = {**base, **self.metric_ports, **(LOOPBACK if loopback else {}), **(env or {}),
                    **private_env(self.home)}
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def ports(self) -> dict[str, int]:
        """Every fixed port the head opens, by name. Each worker process opens
        one more, chosen by Ray from 10002-19999 (on loopback too)."""
        return {"gcs": self.port, "dashboard": self.dashboard_port,
                **self.other_ports,
                "autoscaler-metrics": int(self.metric_ports["AUTOSCALER_METRIC_PORT"]),
                "dashboard-metrics": int(self.metric_ports["DASHBOARD_METRIC_PORT"])}

    def start(self, timeout: float = 180) -> LocalHead:
        cmd = [self._ray, "start", "--head", "--block", f"--port={self.port}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", "--disable-usage-stats",
               *[f"--{flag}={port}" for flag, port in self.other_ports.items()]]
        self.log = open(os.path.join(self.home, "head.log"), "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        # Ready means a job can be submitted: the dashboard answers before the
        # job agent has registered ("No available agent to submit job").
        deadline, answer = time.time() + timeout, ""
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray head exited early: {self._log_tail()}")
            try:
                self.submit_nowait(["true"], working_dir=None)
                return self
            except Exception as e:  # not up yet: connection refused, or no job agent
                answer = str(e)[-1000:]
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"ray head took no job within {timeout}s; last answer: {answer}")

    def _log_tail(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-2000:]

    @property
    def _ray(self) -> str:
        return os.path.join(os.path.dirname(sys.executable), "ray")

    def submit(self, entrypoint: list[str], working_dir: str = ".", timeout: float = 900,
               capture: bool = False, env_vars: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir ... -- entrypoint`, waiting for it to end.

        Without `capture` the CLI runs and the job's log streams here. With
        it, the job goes in through `submit_nowait` and its log comes back as
        stdout once it ends (exit status 0 if it succeeded, else 1, as the
        CLI's), found by polling the job's status: the CLI's log tail closes
        seconds after the job ends (a one-line job: done in 2.5 s, the CLI
        back after 7-15 s). `env_vars` go to the job's
        driver and every worker it starts (its runtime env), e.g. a bucket's
        endpoint and credentials.
        """
        if not capture:
            runtime = [f"--runtime-env-json={json.dumps({'env_vars': env_vars})}"] if env_vars else []
            cmd = [self._ray, "job", "submit", f"--address={self.dashboard_url}",
                   f"--working-dir={working_dir}", *runtime, "--", *entrypoint]
            return subprocess.run(cmd, env=self.env, timeout=timeout, text=True)
        cmd = ["submit_job", *entrypoint]
        try:
            job_id = self.submit_nowait(entrypoint, working_dir, env_vars)
        except Exception as e:  # refused: a bad runtime env, an unreachable head
            return subprocess.CompletedProcess(cmd, 1, "", f"submission refused: {e}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = self._api(f"/api/jobs/{job_id}")
                if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                    break
            except OSError:  # a busy dashboard (urllib's errors are OSErrors): ask again
                pass
            if time.monotonic() > deadline:
                self._api(f"/api/jobs/{job_id}/stop", method="POST")
                raise subprocess.TimeoutExpired(cmd, timeout)
            time.sleep(0.25)
        logs = self._api(f"/api/jobs/{job_id}/logs")["logs"]
        return subprocess.CompletedProcess(cmd, 0 if job["status"] == "SUCCEEDED" else 1, logs,
                                           f"job {job_id} {job['status']}: {job.get('message') or ''}")

    def submit_nowait(self, entrypoint: list[str], working_dir: str | None = ".",
                      env_vars: dict[str, str] | None = None, job_id: str | None = None) -> str:
        """Submit a job and return its submission id at once.

        What `ray job submit --no-wait` does (the working dir packaged and
        uploaded, the same job server), through Ray's Python client in this
        process: a CLI process would cost seconds of imports per job.
        """
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.dashboard_url, headers={"Authorization": f"Bearer {self._token}"})
        runtime = {k: v for k, v in (("working_dir", working_dir), ("env_vars", env_vars)) if v}
        return client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime or None,
                                 submission_id=job_id or f"smolray-{secrets.token_hex(6)}")

    @functools.cached_property
    def _token(self) -> str:
        with open(self.env["RAY_AUTH_TOKEN_PATH"]) as f:
            return f.read().strip()

    def _api(self, path: str, method: str = "GET") -> dict:
        """The job server's REST API, with this head's token."""
        req = urllib.request.Request(self.dashboard_url + path, method=method,
                                     headers={"Authorization": f"Bearer {self._token}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # The session holds the head and everything it spawned (GCS,
            # raylet, workers, dashboard); signal that group only.
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        _kill_leftovers(self.home)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> LocalHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_leftovers(temp_dir: str) -> None:
    """Processes that left the session but still name our temp dir (Ray daemonizes a few)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
