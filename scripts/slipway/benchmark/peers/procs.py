"""Process trees on Linux, read from /proc: who descends from a server, and how much memory they hold.

A server is measured as its whole tree (TorchServe's Java frontend and Python workers, LitServe's
and BentoML's worker processes, a container's processes as the host sees them): the sum of the
resident set sizes (VmRSS) of every process in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

PROC = Path("/proc")


def parse_ppid(stat: str) -> int:
    """The parent pid from the text of /proc/<pid>/stat (the command name may hold spaces and parentheses)."""
    return int(stat[stat.rindex(")") + 2:].split()[1])


def parse_rss_kib(status: str) -> int:
    """VmRSS in KiB from the text of /proc/<pid>/status; 0 for a process without one (a zombie)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children_map(proc: Path = PROC) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = parse_ppid((entry / "stat").read_text())
        except (OSError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def tree(root: int, proc: Path = PROC) -> list[int]:
    """``root`` and every process that descends from it."""
    kids = children_map(proc)
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def tree_rss_bytes(root: int, proc: Path = PROC) -> int:
    total = 0
    for pid in tree(root, proc):
        try:
            total += parse_rss_kib((proc / str(pid) / "status").read_text())
        except OSError:
            continue
    return total * 1024


class MemorySampler:
    """Samples the tree's RSS every ``interval`` seconds on a thread, between ``start`` and ``stop``."""

    def __init__(self, root: int, interval: float = 0.5):
        self.root, self.interval = root, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(tree_rss_bytes(self.root))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(tree_rss_bytes(self.root))


def stop_tree(root: int, grace: float = 15.0) -> None:
    """SIGTERM to ``root``'s process group and to every descendant, SIGKILL to what is left after ``grace``."""
    members = tree(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(root, sig)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in members):
            time.sleep(0.2)
        if not any(_alive(p) for p in members):
            return


def _alive(pid: int) -> bool:
    try:
        state = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2:].split()[0] != "Z"
