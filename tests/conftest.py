"""Session-wide fixtures: one local Ray cluster and one tokenized corpus.

Starting Ray costs seconds and tokenizing the sample corpus more, so both
happen once per session; tests build recipes that point at them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
SAMPLE = ROOT / "data" / "sample"
PY = sys.executable

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Test speed: with every worker group Ray Train starts a preemption watcher,
# one more actor process (importing Ray) that logs node drains. No test
# drains a node (a lost node is a dead raylet, not a drain), and smolray's
# loop does not read the watcher's signal. Workers and jobs of the in-process
# cluster and of the job head inherit this from here.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# One PATH for every process of the run (this one, the in-process cluster,
# the job head, subprocesses): DeepSpeed's CPU op is built with whichever
# `ninja` comes first, and a different ninja rebuilds it (about 55 s).
os.environ["PATH"] = os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", "")


def long(test):
    """A test `make test` has no room for in its 30 minutes on 2 cores (docs/testing.md):
    marked `long`, skipped unless SMOLRAY_LONG_TESTS=1, which `make test-long` sets."""
    skip = pytest.mark.skipif(not os.environ.get("SMOLRAY_LONG_TESTS"),
                              reason="long: run by make test-long (SMOLRAY_LONG_TESTS=1)")
    return pytest.mark.long(skip(test))


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory):
    """Caches a run writes live in the run's temp dir, not the user's home."""
    base = tmp_path_factory.mktemp("cache")
    for var, sub in (("HF_HOME", "hf"), ("VLLM_CACHE_ROOT", "vllm"), ("MPLCONFIGDIR", "mpl")):
        os.environ[var] = str(base / sub)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    import ray

    from smolray.cluster import start_local

    # Never a cluster some other process left running, never ~/.ray/auth_token:
    # a new cluster with a token of its own. More logical CPUs than cores, so
    # Ray Data tasks always find one beside the trainer workers (trainer
    # workers booking every CPU deadlock Ray Data's reads).
    start_local(str(tmp_path_factory.mktemp("ray")), num_cpus=8, include_dashboard=False,
                log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    from smolray.data.raw import iter_texts
    from smolray.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tokenizer")
    texts = (t for name in ("prose", "code", "math")
             for t in iter_texts([str(SAMPLE / f"{name}.jsonl")], "text", 400_000))
    train_bpe(texts, vocab_size=1024, out_dir=out, model_max_length=512)
    return str(out)


@pytest.fixture(scope="session")
def tok(tokenizer_dir):
    from smolray.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def init_model(tokenizer_dir, tok, tmp_path_factory) -> str:
    """A tiny random Llama saved as a Hugging Face folder with its tokenizer."""
    from smolray.model import build_model
    from smolray.recipe import ModelConfig

    cfg = ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=512)
    out = tmp_path_factory.mktemp("init")
    build_model(cfg, seed=0, bos_id=tok.bos_token_id, eos_id=tok.eos_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def recipe_overrides(tokenizer: str, data_root: Path, out: Path) -> list[str]:
    """--set lines that point the tiny recipe at test-owned paths."""
    # No step-0 validation (the demo's): tests assert on the training rows.
    sets = [f"tokenizer={tokenizer}", "model.vocab_size=1024", f"run.output_dir={out}",
            "eval.at_start=false"]
    for name in ("prose", "code", "math"):
        sets.append(f"data.sources.{name}.shards={data_root / name}")
    return sets


@pytest.fixture(scope="session")
def corpus(ray_cluster, tokenizer_dir, tmp_path_factory):
    """The sample corpus tokenized once: {"tokenizer", "root", "manifests"}."""
    from smolray.data.tokenize import tokenize_recipe
    from smolray.recipe import load_recipe

    root = tmp_path_factory.mktemp("shards")
    sets = recipe_overrides(tokenizer_dir, root, root / "unused")
    recipe = load_recipe(TINY, sets + [f"data.sources.{n}.raw=[{SAMPLE / n}.jsonl]"
                                       for n in ("prose", "code", "math")])
    manifests = tokenize_recipe(recipe)
    return {"tokenizer": tokenizer_dir, "root": root, "manifests": manifests}


def heldout_texts(shards) -> list[str]:
    """A source's held-out texts, from every held-out file its manifest lists, in order."""
    from smolray.data.raw import iter_texts
    from smolray.data.shards import heldout_uris

    return list(iter_texts(heldout_uris(str(shards)), "text"))


def one_source_recipe(tokenizer: str, name: str, raw: Path, tmp: Path) -> dict:
    """The tiny recipe as a dict, training on one source made from `raw` (shards and run under tmp)."""
    recipe = yaml.safe_load(TINY.read_text())
    recipe["tokenizer"] = tokenizer
    recipe["model"]["vocab_size"] = 1024
    recipe["data"]["sources"] = [{"name": name, "raw": [str(raw)], "shards": str(tmp / name)}]
    recipe["data"]["weights"] = {name: 1.0}
    recipe["eval"] = {"every_steps": 0, "at_start": False}
    recipe["run"] = {"output_dir": str(tmp / "run")}
    return recipe


def recipe_factory(corpus: dict, default_out: Path):
    """Tiny recipe on the session corpus; extra `KEY=VALUE` overrides win."""
    from smolray.recipe import load_recipe

    def make(*sets: str, out: Path | None = None):
        base = recipe_overrides(corpus["tokenizer"], corpus["root"], out or default_out)
        return load_recipe(TINY, base + list(sets))

    return make


@pytest.fixture
def make_recipe(corpus, tmp_path):
    return recipe_factory(corpus, tmp_path / "run")


@pytest.fixture(scope="session")
def head(tmp_path_factory):
    """A private Ray head with a job server, for `ray job submit` tests.

    It runs with an empty HOME, as on a newcomer's machine: every job test
    then proves the jobs need nothing from the user's home directory.
    """
    from smolray.cluster import LocalHead

    head = LocalHead(num_cpus=6, env={"HOME": str(tmp_path_factory.mktemp("home"))}).start()
    yield head
    head.stop()
    # The head and everything it spawned are gone.
    leftovers = subprocess.run(["pgrep", "-f", head.temp_dir], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""


@pytest.fixture(scope="module")
def multinode(ray_cluster):
    """A real multi-node cluster on this machine, with cluster.yaml's node roles.

    Module-scoped: five idle nodes cost about 7% of a 2-core machine, which
    the rest of the session should not pay.

    A head with no CPUs (it runs the drivers, as cluster.yaml's head does),
    two trainer nodes (`train_node`) and two CPU-only data nodes
    (`data_node`): each node its own raylet, object store and ports, all on
    127.0.0.1. `remove_node(node, allow_graceful=False)` kills a node's raylet
    and every worker on it, as a lost machine would. Yields
    {"cluster", "train": [nodes], "data": [nodes], "dashboard": url}.
    """
    from ray.cluster_utils import Cluster

    from smolray.cluster import _free_port, _metric_ports

    os.environ.update(_metric_ports())  # not the session cluster's metric ports
    # Test speed, not behaviour: Ray marks a silent node dead after 15 s or more
    # of missed health checks, and until then Ray Train's elastic restart still
    # counts the lost node's CPUs and waits out its 60 s worker-group start
    # timeout for them (docs/reliability.md has the production figures). Here
    # a node is dead after about 2 s, and a start that cannot fit (the wait for
    # its placement group) retries after 10.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "_system_config": {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                           "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}})
    nodes = {"train": [cluster.add_node(num_cpus=2, resources={"train_node": 1}) for _ in range(2)],
             "data": [cluster.add_node(num_cpus=2, resources={"data_node": 1}) for _ in range(2)]}
    cluster.wait_for_nodes()
    yield {"cluster": cluster, **nodes, "dashboard": f"http://127.0.0.1:{port}"}
    cluster.shutdown()
    os.environ.pop("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")


def registered_step(run_dir: Path) -> int:
    """The step of the newest checkpoint Ray Train has registered for a run (0 if none).

    A checkpoint folder exists before it is registered (Ray records it after
    the upload); only a registered one is what a rerun resumes from.
    """
    try:
        snap = json.loads((Path(run_dir) / "checkpoint_manager_snapshot.json").read_text())
        return int(snap["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1, with the sample corpus in bucket `corpus`.

    Yields its port. Clients reach it over HTTP exactly as they would a bucket.
    """
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = s3_client(port)
    for bucket in ("corpus", "runs"):
        client.create_bucket(Bucket=bucket)
    for name in ("prose", "code", "math"):
        client.upload_file(str(SAMPLE / f"{name}.jsonl"), "corpus", f"raw/{name}/part-0.jsonl")
    yield port
    server.stop()


def s3_client(port: int):
    """A boto3 S3 client of the test server, for the tests' own reads and writes."""
    import boto3

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def s3_env(port: int) -> dict[str, str]:
    """What a process needs to open plain s3:// URIs on the test server (as on AWS)."""
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}
