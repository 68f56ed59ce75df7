"""Clusters smolray starts for itself are private: own token, own temp dir, nothing in HOME."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile

from conftest import ROOT

PROBE = "import os, ray; ray.init(); print('HOME=' + os.environ['HOME'], ray.cluster_resources()['CPU'])"


def test_own_head_takes_jobs_with_its_own_token_and_an_empty_home(head):
    home = head.env["HOME"]
    token = head.env["RAY_AUTH_TOKEN_PATH"]
    assert os.path.dirname(token) == head.temp_dir
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    out = head.submit(["python", "-c", PROBE], working_dir=str(ROOT), timeout=300, capture=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"HOME={home} 6.0" in out.stdout  # the job ran on this head, in that HOME
    # Nothing was written to (or needed from) the home directory's ~/.ray.
    assert not os.path.exists(os.path.join(home, ".ray"))
    # Token auth is on: a client without the token is turned away.
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env["HOME"] = home
    denied = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "job", "list",
                             f"--address={head.dashboard_url}"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert denied.returncode != 0
    assert "token" in (denied.stdout + denied.stderr).lower()


CONNECT = """
import os, ray
from smolray.cluster import connect
connect(min_cpus=2)
ctx = ray.get_runtime_context()
print("TEMP=" + ray._private.worker.global_worker.node.get_temp_dir_path())
print("TOKEN=" + os.environ["RAY_AUTH_TOKEN_PATH"])
print("CPU", ray.get(ray.remote(lambda: os.environ["RAY_AUTH_TOKEN_PATH"]).remote()))
"""


def test_connect_starts_a_private_local_cluster_and_removes_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # A short TMPDIR of the test's own: Ray's socket paths must stay under 108 bytes.
    short = tempfile.mkdtemp(prefix="t-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), TMPDIR=short)
    out = subprocess.run([sys.executable, "-c", CONNECT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    temp, token = lines["TEMP"], lines["TOKEN"]
    # Its own temp dir (not /tmp/ray) holding its own token, which its workers use.
    assert temp.startswith(short) and os.path.dirname(token) == temp
    assert f"CPU {token}" in out.stdout
    assert os.listdir(home) == []  # no ~/.ray/auth_token, nothing else
    assert not os.path.exists(temp)  # removed at exit
    shutil.rmtree(short, ignore_errors=True)
