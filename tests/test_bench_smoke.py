"""The benchmark suite's smoke run: real Ray, real actors, tiny sizes; outputs well formed.

TRL is not a test dependency, so the smoke suite skips the TRL comparison (recorded as
skipped in the JSON); the full suite (`python -m benchmarks.run`) runs it.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


@pytest.mark.slow
def test_smoke_suite_writes_json_markdown_and_plots(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "smoke", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [js] = list(tmp_path.glob("*-smoke.json"))
    res = json.loads(js.read_text())
    assert res["suite"] == "smoke" and res["environment"]["machine_key"] in js.name
    for key in ("weight_sync", "overhead", "data_plane", "memory"):
        assert "skipped" not in res[key], (key, res[key])
    assert all(math.isfinite(x) for x in _numbers(res))  # None is written for non-finite values, never NaN
    [ws] = res["weight_sync"]["rows"]
    assert ws["bytes"] > 0 and ws["floor_s"] > 0 and ws["ratio"] > 0 and ws["verdict"] in ("PASS", "MISS")
    [oh] = res["overhead"]["rows"]
    assert 0 <= oh["crpo"]["overhead_fraction"] < 1 and oh["step_over_floor"] > 0
    assert oh["crpo"]["measured_steps"] >= 1 and oh["floor"]["floor_s"] > 0
    assert all(r["move_over_memcpy"] > 0 for r in res["data_plane"]["rows"])
    assert res["memory"]["ratio"] > 0 and res["memory"]["one"]["peak_rss_gib"] > 0
    assert res["trl"]["skipped"] and res["gpu"].get("skipped") in (None, "no GPU", "no vllm (pip install -e '.[vllm]')")
    md = js.with_suffix(".md").read_text()
    assert "| benchmark | figure | value | target | verdict |" in md and "Closing note" in md
    assert set(res["plots"]) == {f"{js.stem}-timeline.png", f"{js.stem}-sync.png"}
    for p in res["plots"]:
        assert (tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
