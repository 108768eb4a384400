"""Finding a Ray cluster's worker processes from a test, to kill them (Linux /proc).

Ray renames each worker process to ``ray::<Class>`` (``ray::<Class>.<method>`` while a
method runs), and every worker carries ``RAY_RAYLET_PID`` of the node that started it,
so a test can pick, say, a rollout worker that is generating right now on one
particular cluster, even with other Ray clusters on the machine.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterable, List, Optional, Set


def _read(pid: str, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def raylets_under(root_pid: int) -> Set[int]:
    """Raylet pids among the descendants of ``root_pid`` (an embedded cluster's driver)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = _read(pid, "stat").decode(errors="replace")
        if stat:
            parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set()
    for pid in parents:
        p = pid
        while p in parents and p not in (0, 1):
            if p == root_pid:
                if b"raylet" in _read(str(pid), "cmdline").split(b"\0")[0]:
                    found.add(pid)
                break
            p = parents[p]
    return found


def workers(raylets: Iterable[int], title: str) -> List[int]:
    """Pids of worker processes titled ``title`` (prefix) started by one of ``raylets``."""
    want = {f"RAY_RAYLET_PID={r}".encode() for r in raylets}
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        cmd = _read(pid, "cmdline").split(b"\0")[0].decode(errors="replace").strip()
        if cmd.startswith(title) and want & set(_read(pid, "environ").split(b"\0")):
            out.append(int(pid))
    return sorted(out)


def raylet_of(pid: int) -> Optional[int]:
    for item in _read(str(pid), "environ").split(b"\0"):
        if item.startswith(b"RAY_RAYLET_PID="):
            return int(item.split(b"=", 1)[1])
    return None


def kill_when(raylets, title: str, timeout: float = 120.0, exact: bool = False) -> int:
    """SIGKILL the first process titled ``title`` on these raylets as soon as one appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in workers(raylets, title)
                if not exact or _read(str(p), "cmdline").split(b"\0")[0].decode().strip() == title]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.02)
    raise TimeoutError(f"no process titled {title!r} within {timeout}s")


def wait_rows(path: Path, n: int, proc, timeout: float = 600.0) -> None:
    """Until ``path`` (JSONL) has ``n`` complete rows; fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited with {proc.returncode} before {n} rows in {path}")
        time.sleep(0.1)
    raise TimeoutError(f"{path}: fewer than {n} rows after {timeout}s")
