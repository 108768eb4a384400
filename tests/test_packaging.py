"""The core imports without Ray; actors/ installs as crpo_ray.actors, never as `actors`."""

import subprocess
import sys
import tomllib

from conftest import REPO

CORE = ["crpo_ray", "crpo_ray.algo", "crpo_ray.config", "crpo_ray.data", "crpo_ray.stages", "crpo_ray.rewards",
        "crpo_ray.metrics", "crpo_ray.prompts", "crpo_ray.schemas", "crpo_ray.tiny", "crpo_ray.cli"]


def _python(code, cwd):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_core_imports_without_ray(tmp_path):
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
            + "assert not bad, bad\nprint('ok')\n")
    r = _python(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_actors_namespace(tmp_path):
    r = _python("import importlib.util, crpo_ray.actors as a; print(a.__name__);"
                "print(importlib.util.find_spec('actors'))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["crpo_ray.actors", "None"]


def test_pyproject():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = " ".join(meta["dependencies"])
    for pkg in ("torch", "transformers", "pyarrow", "omegaconf", "ray[default,train]", "scikit-learn"):
        assert pkg in deps
    assert not any(d.startswith("torch") and "<" in d for d in meta["dependencies"])
    assert set(meta["optional-dependencies"]) >= {"vllm", "bench", "test"}
    assert meta["scripts"]["crpo-ray"] == "crpo_ray.cli:main"
    for top in ("pyproject.toml", "README.md", "crpo_ray", "actors", "cluster", "tests", "benchmarks"):
        assert (REPO / top).exists(), top
