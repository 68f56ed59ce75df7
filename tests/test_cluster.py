"""Clusters smolray starts for itself are private: own token, own temp dir, nothing in HOME."""

from __future__ import annotations

import ipaddress
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
    assert os.path.dirname(token) == head.home and os.path.dirname(head.temp_dir) == head.home
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
    _no_other_user_gets_in(head)
    _every_port_is_on_loopback_and_listed(head)


def _listening() -> dict[int, tuple[str, int]]:
    """Listening TCP sockets on this machine: socket inode -> (address, port), from /proc/net."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                cols = row.split()
                if cols[3] != "0A":  # LISTEN
                    continue
                addr, port = cols[1].split(":")
                raw = bytes.fromhex(addr)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                ip = ipaddress.ip_address(words)
                if ip.version == 6 and ip.ipv4_mapped:
                    ip = ip.ipv4_mapped
                out[int(cols[9])] = (str(ip), int(port, 16))
    return out


def _every_port_is_on_loopback_and_listed(head):
    """Each process of the head (it carries the head's token path) listens on loopback only."""
    token = "RAY_AUTH_TOKEN_PATH=" + head.env["RAY_AUTH_TOKEN_PATH"]
    sockets = _listening()
    seen: dict[int, str] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if token.encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            inodes = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue  # gone meanwhile
        for link in inodes:
            if link.startswith("socket:[") and int(link[8:-1]) in sockets:
                ip, port = sockets[int(link[8:-1])]
                assert ip in ("127.0.0.1", "::1"), f"{name} (pid {pid}) listens on {ip}:{port}"
                seen[port] = name
    # Any socket on a named port, whichever process holds it, is on loopback
    # (some agents open theirs later; a missing one is no exposure).
    named = head.ports
    for ip, port in sockets.values():
        if port in named.values():
            assert ip in ("127.0.0.1", "::1"), f"port {port} ({named}) listens on {ip}"
    listening = {port for _, port in sockets.values()}
    assert {named["gcs"], named["dashboard"]} <= listening and seen


# Run as another (unprivileged) user: every way into the head's files must fail.
# (A shell, not Python: the interpreter may live where that user cannot run it.)
INTRUDER = """
T=$1
try() { if eval "$2" >/dev/null 2>&1; then echo "GOT IN: $1"; else echo "denied: $1"; fi; }
try "list the temp dir" 'ls "$T"'
try "list logs" 'ls "$T"/session_*/logs'
try "read a log" 'cat "$T"/session_*/logs/raylet.out'
try "swap a job folder" 'test -w "$T"/session_latest/runtime_resources/working_dir_files'
"""


def _no_other_user_gets_in(head):
    import glob

    # Ray opens its own folders to everyone (0777); ours around them is 0700.
    assert stat.S_IMODE(os.stat(head.home).st_mode) == 0o700
    opened = [d for d in glob.glob(head.temp_dir + "/**/", recursive=True)
              if stat.S_IMODE(os.stat(d).st_mode) & 0o002]
    assert opened, "Ray no longer opens its folders: the private parent could be revisited"
    assert glob.glob(head.temp_dir + "/session_*/runtime_resources/working_dir_files/*"), "no job folder"
    if os.getuid() != 0:
        return  # another user can be played only as root

    def intrude() -> list[str]:
        out = subprocess.run(["/bin/sh", "-c", INTRUDER, "sh", head.temp_dir], capture_output=True,
                             text=True, timeout=60, user=65534, group=65534, cwd="/")
        return out.stdout.splitlines()

    got = intrude()
    assert len(got) == 4 and all(line.startswith("denied:") for line in got), got
    # What Ray alone leaves: with our folder opened up, the same user gets in everywhere.
    os.chmod(head.home, 0o755)
    try:
        assert all(line.startswith("GOT IN:") for line in intrude())
    finally:
        os.chmod(head.home, 0o700)


CONNECT = """
import os, ray
from smolray.cluster import connect
connect(min_cpus=2)
ctx = ray.get_runtime_context()
print("TEMP=" + ray._private.worker.global_worker.node.get_temp_dir_path())
print("TOKEN=" + os.environ["RAY_AUTH_TOKEN_PATH"])
print("CPU", ray.get(ray.remote(lambda: os.environ["RAY_AUTH_TOKEN_PATH"]).remote()))
print("NODE=" + ray.util.get_node_ip_address())
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
    # Its own temp dir (not /tmp/ray) inside a private folder holding its own token,
    # which its workers use.
    assert temp.startswith(short) and os.path.dirname(token) == os.path.dirname(temp)
    assert f"CPU {token}" in out.stdout
    assert lines["NODE"] == "127.0.0.1"  # loopback-only: no other machine can reach it
    assert os.listdir(home) == []  # no ~/.ray/auth_token, nothing else
    assert not os.path.exists(os.path.dirname(temp))  # the private folder is removed at exit
    shutil.rmtree(short, ignore_errors=True)
