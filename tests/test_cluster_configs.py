"""cluster/: every YAML loads and passes Ray's own validation where Ray has one."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from conftest import REPO

CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
ROLES = {"rollout", "learner", "scorer"}
STANDARD = {"CPU", "GPU", "TPU", "memory", "object_store_memory"}


def _load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def test_every_yaml_loads():
    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert names == sorted(["aws.yaml", "gcp.yaml", "fake-multinode.yaml", "kuberay-raycluster.yaml",
                            "kuberay-rayjob.yaml", "runtime_env.yaml"])
    for name in names:
        assert isinstance(_load(name), dict), name
    assert (CLUSTER / "README.md").is_file() and (CLUSTER / "Dockerfile").is_file()


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_ray_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(name)
    cfg = prepare_config(copy.deepcopy(raw))  # merges the provider's defaults, as `ray up` does
    validate_config(cfg)  # Ray's ray-schema.json (jsonschema)
    types = cfg["available_node_types"]
    assert set(types) == {"head", "rollout_gpu", "learner_gpu", "scorer_cpu"} and cfg["head_node_type"] == "head"
    for role in ROLES:
        node = types[f"{role}_{'cpu' if role == 'scorer' else 'gpu'}"]
        assert node["resources"].get(role, 0) >= 1, (name, role)
        assert node["min_workers"] == 0 and node["max_workers"] >= 1
        assert ("GPU" in node["resources"]) == (role != "scorer")
    assert cfg["max_workers"] >= sum(t.get("max_workers", 0) for t in types.values() if t is not types["head"])
    commands = " ".join(cfg["head_setup_commands"] + types["rollout_gpu"]["worker_setup_commands"])
    assert "crpo-ray" in commands and "[vllm]" in commands
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])


def test_broken_launcher_config_is_rejected():
    """The validation is real: a misspelled field fails it."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load("aws.yaml")
    raw["available_node_types"]["rollout_gpu"]["max_worker"] = raw["available_node_types"]["rollout_gpu"].pop(
        "max_workers")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


def test_fake_multinode_config():
    from ray.autoscaler._private.util import validate_config

    cfg = _load("fake-multinode.yaml")
    validate_config(cfg)  # the autoscaler validates this file as is, with no defaults merged in
    assert cfg["provider"]["type"] == "fake_multinode"
    rollout = cfg["available_node_types"]["rollout"]
    assert rollout["min_workers"] == 0 and rollout["max_workers"] == 2 and rollout["resources"]["rollout"] == 1
    assert "rollout" not in cfg["available_node_types"][cfg["head_node_type"]]["resources"]
    assert cfg["idle_timeout_minutes"] <= 0.5


def _kuberay_cluster_spec(spec, name="crpo-ray", namespace="crpo"):
    """Ray's own translation of a RayCluster into an autoscaler config (validated inside)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr({"metadata": {"name": name, "namespace": namespace},
                                                   "spec": spec})


def _check_ray_cluster_spec(spec):
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"] is not None and head["template"]["spec"]["containers"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never exposed outside the cluster
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"rollout-gpu", "learner-gpu", "scorer-cpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) + g["minReplicas"] <= g["maxReplicas"]
        assert g["maxReplicas"] >= 1 and g["template"]["spec"]["containers"]
    for c in [head["template"]["spec"]["containers"][0]] + [g["template"]["spec"]["containers"][0]
                                                               for g in groups.values()]:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    derived = _kuberay_cluster_spec(spec)
    types = derived["available_node_types"]
    assert types["rollout-gpu"]["resources"]["rollout"] == 1 and types["rollout-gpu"]["resources"]["GPU"] == 1
    assert types["learner-gpu"]["resources"]["learner"] >= 1 and types["learner-gpu"]["resources"]["GPU"] >= 1
    assert types["scorer-cpu"]["resources"]["scorer"] >= 1 and "GPU" not in types["scorer-cpu"]["resources"]
    return derived


def test_kuberay_raycluster():
    cr = _load("kuberay-raycluster.yaml")
    assert cr["apiVersion"] == "ray.io/v1" and cr["kind"] == "RayCluster" and cr["metadata"]["name"]
    _check_ray_cluster_spec(cr["spec"])


def test_kuberay_rayjob():
    from ray.runtime_env import RuntimeEnv

    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert re.match(r"^crpo-ray train --config configs/\S+\.yaml", spec["entrypoint"])
    assert (REPO / spec["entrypoint"].split()[3]).is_file()  # the config it names exists
    assert spec["shutdownAfterJobFinishes"] is True
    renv = yaml.safe_load(spec["runtimeEnvYAML"])
    # working_dir lives in the image (cluster/Dockerfile); Ray checks it exists, so validate
    # the rest with this checkout standing in for it
    assert renv["working_dir"] == "/home/ray/crpo-ray" and "/home/ray/crpo-ray" in (CLUSTER / "Dockerfile").read_text()
    RuntimeEnv(**dict(renv, working_dir=str(REPO)))  # Ray's runtime-env validation
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"] == _load("kuberay-raycluster.yaml")["spec"]  # one cluster definition
    submitter = {e["name"] for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= submitter


def test_runtime_env():
    from ray.runtime_env import RuntimeEnv

    raw = _load("runtime_env.yaml")
    assert raw["working_dir"] == "."  # relative to where `ray job submit` runs: the repository root
    env = RuntimeEnv(**dict(raw, working_dir=str(REPO)))
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert {".git", ".venv", "runs"} <= set(env["excludes"])
    with pytest.raises(Exception):  # the validation is real
        RuntimeEnv(env_vars={"A": 1})


def _config_resources():
    found = {}
    for name in LAUNCHERS:
        for t, node in _load(name)["available_node_types"].items():
            found[(name, t)] = set(node.get("resources", {})) - STANDARD
    for name in ("kuberay-raycluster.yaml",):
        for t, node in _kuberay_cluster_spec(_load(name)["spec"])["available_node_types"].items():
            found[(name, t)] = set(node["resources"]) - STANDARD
    return found


def _code_resources():
    """Custom resources the cluster run configs make the actors ask for (cluster.*_resources)."""
    from crpo_ray.config import load_config

    names = set()
    for path in sorted((REPO / "configs").glob("qwen3-*.yaml")):
        c = load_config(path).cluster
        names |= set(c.rollout_resources) | set(c.learner_resources) | set(c.scorer_resources)
    return names


def test_custom_resources_match_the_code():
    per_type = _config_resources()
    # every config names exactly the three roles, one per worker node type
    for name in LAUNCHERS + ["kuberay-raycluster.yaml"]:
        assert set().union(*(v for (f, _), v in per_type.items() if f == name)) == ROLES, name
    assert all(len(v) <= 1 for v in per_type.values()), per_type
    requested = _code_resources()
    assert requested == ROLES  # each role's actors are placed on that role's node type
    assert requested <= ROLES, f"the code asks for resources no cluster config defines: {requested - ROLES}"
    fake = set(_load("fake-multinode.yaml")["available_node_types"]["rollout"]["resources"]) - STANDARD
    assert fake == {"rollout"}
