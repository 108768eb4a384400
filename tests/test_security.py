"""Security defaults: no remote code, no pickle loads, no secrets in configs, loopback only."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from crpo_ray.secret_keys import find_secret_keys, looks_like_secret, secret_keys_message

SOURCE_DIRS = ("crpo_ray", "actors", "benchmarks")


def _python_files(dirs):
    for d in dirs:
        yield from sorted((REPO / d).rglob("*.py"))


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield name, owner, node


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_trust_remote_code_is_off_by_default():
    from crpo_ray.config import load_config

    assert load_config().model.trust_remote_code is False
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        assert load_config(cfg).model.trust_remote_code is False, cfg.name


def test_every_model_load_passes_the_configured_trust_remote_code():
    """Every from_pretrained / vLLM LLM(...) in the package passes trust_remote_code, never a literal True."""
    seen = 0
    for path in _python_files(SOURCE_DIRS):
        for name, _, call in _calls(path):
            if name not in ("from_pretrained", "LLM"):
                continue
            seen += 1
            value = _kw(call, "trust_remote_code")
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            assert value is not None, f"{where}: {name}() without trust_remote_code=<config value>"
            assert not (isinstance(value, ast.Constant) and value.value is True), f"{where}: trust_remote_code=True"
    assert seen >= 5  # the scan found the loads (engines, learner, fleet, scorer, driver)
    for path in _python_files(SOURCE_DIRS + ("tests",)):
        for name, _, call in _calls(path):
            value = _kw(call, "trust_remote_code")
            assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}:{call.lineno}"


def test_every_torch_load_uses_weights_only():
    seen = 0
    for path in _python_files(SOURCE_DIRS + ("tests",)):
        for name, owner, call in _calls(path):
            if name == "load" and owner == "torch":
                seen += 1
                value = _kw(call, "weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, \
                    f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
    assert seen >= 2
    # and no other way in to pickle: the plain text, for calls the AST walk would not name
    for path in _python_files(SOURCE_DIRS):
        text = path.read_text()
        assert "pickle.load" not in text and "torch.serialization.load" not in text, path


@pytest.mark.parametrize("key", ["hf_token", "HF_TOKEN", "wandb_api_key", "wandbApiKey", "apikey", "password",
                                 "db_passwd", "client_secret", "aws_secret_access_key", "access_key",
                                 "auth_token", "github-token", "credentials"])
def test_secret_keys_are_found(key):
    assert looks_like_secret(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "max_prompt_tokens", "tokenizer", "tokenizer_path",
                                 "vllm_logprobs_topk", "keep_last", "key", "secretary_stage", "tokens"])
def test_ordinary_keys_are_not_secrets(key):
    assert not looks_like_secret(key)


def test_find_secret_keys_walks_nested_config():
    raw = {"model": {"path": "x", "hf_token": "hf_abc"},
           "logging": {"trackers": [{"name": "wandb", "apiKey": "k"}], "tensorboard": True},
           "rollout": {"max_new_tokens": 48}}
    paths = find_secret_keys(raw)
    assert paths == ["model.hf_token", "logging.trackers[0].apiKey"]
    msg = secret_keys_message(paths, "configs/x.yaml")
    assert "\n" not in msg and "model.hf_token" in msg and "(and 1 more)" in msg and "environment" in msg
    assert "hf_abc" not in msg  # the value itself is never echoed


def test_shipped_configs_and_every_config_field_are_clean():
    from crpo_ray.config import Config

    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        assert find_secret_keys(yaml.safe_load(cfg.read_text())) == [], cfg.name
    for cfg in sorted((REPO / "cluster").glob("*")):  # tokens only by reference (env, Secret, token file)
        text = cfg.read_text()
        assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?\w", text), cfg.name
        assert not re.search(r"\bhf_[A-Za-z0-9]{20,}|\bsk-[A-Za-z0-9]{20,}", text), cfg.name

    def fields(cls, prefix=""):
        import dataclasses
        import typing

        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield prefix + f.name
            if dataclasses.is_dataclass(hints[f.name]):
                yield from fields(hints[f.name], prefix + f.name + ".")

    names = list(fields(Config))
    assert len(names) > 40 and [n for n in names if looks_like_secret(n.rsplit(".", 1)[-1])] == []


# Run in a fresh interpreter, as `crpo-ray train` does: whether Ray keeps to loopback is
# decided when Ray is first imported, so the pytest process (Ray long imported) cannot tell.
EMBEDDED = """
import json
from crpo_ray.actors.driver import init_ray
from crpo_ray.config import load_config
init_ray(load_config("configs/tiny-cpu.yaml", ["cluster.num_cpus=2"]), 1)  # imports Ray, as in `crpo-ray train`
import ray
node = ray._private.worker._global_node
print("EMBEDDED " + json.dumps({"gcs": node.gcs_address, "session": node.get_session_dir_path(),
                                "nodes": [n["NodeManagerAddress"] for n in ray.nodes()]}), flush=True)
input()  # hold the cluster until the test has looked at its sockets
ray.shutdown()
"""


def _embedded(env):
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDED], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = ""
        while not line.startswith("EMBEDDED "):
            line = proc.stdout.readline()
            if not line:
                return None, proc.communicate(timeout=60)[1][-3000:], set()
        info = json.loads(line[len("EMBEDDED "):])
        listening = _listening_addresses(info["session"])
        proc.communicate("\n", timeout=120)
        return info, "", listening
    finally:
        proc.kill()


def _clean_env(ray_tmp):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["RAY_TMPDIR"] = str(ray_tmp)  # Ray searches (and makes) its clusters under $RAY_TMPDIR/ray
    return env


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.mark.slow
def test_embedded_cluster_is_on_loopback():
    """The driver's embedded Ray: every node on 127.0.0.1, and no Ray process listens elsewhere."""
    tmp = tempfile.mkdtemp(prefix="crpo-sec-", dir="/tmp")  # short: Unix socket paths
    try:
        info, err, listening = _embedded(_clean_env(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert info is not None, err
    assert set(info["nodes"]) == {"127.0.0.1"} and info["gcs"].startswith("127.0.0.1:"), info
    assert listening and {ip for ip, _ in listening} <= LOOPBACK, listening


@pytest.mark.slow
def test_embedded_cluster_never_joins_a_running_one():
    from fake_cluster import fake_cluster

    tmp = Path(tempfile.mkdtemp(prefix="crpo-sec-", dir="/tmp"))
    try:
        with fake_cluster(head_cpus=1, temp_dir=tmp / "ray") as fc:  # someone else's cluster
            env = _clean_env(tmp)
            env["RAY_AUTH_MODE"] = fc.env["RAY_AUTH_MODE"]
            info, err, _ = _embedded(env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert info is not None, err  # it started ...
    assert info["gcs"].rsplit(":", 1)[1] != fc.address.rsplit(":", 1)[1], info  # ... a cluster of its own


def _listening_addresses(session_dir: str):
    import ray  # noqa: F401 - first: Ray bundles psutil and puts it on sys.path
    import psutil

    out = set()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if not any(session_dir in a for a in proc.info["cmdline"] or []):
                continue
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return out
