"""Process trees on Linux, read from /proc: who descends from a server, and how much memory they hold.

A server is measured as its whole tree (TorchServe's Java frontend and Python workers, LitServe's
and BentoML's worker processes, a container's processes as the host sees them): the sum of the
proportional set sizes (PSS) of every process in it, from ``/proc/PID/smaps_rollup`` (or the sum
over ``/proc/PID/smaps`` on a kernel without the rollup). PSS charges a page shared by N processes
1/N to each, so the sum counts shared libraries and the copy-on-write pages of forked workers once;
the sum of resident set sizes (VmRSS) counts them once per process and over-counts every server
that runs several processes. The RSS sum is kept beside it. A process whose smaps cannot be read
(another user's, without the right to) counts with its RSS, and the sample says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def parse_ppid(stat: str) -> int:
    """The parent pid from the text of /proc/<pid>/stat (the command name may hold spaces and parentheses)."""
    return int(stat[stat.rindex(")") + 2:].split()[1])


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime + cutime + cstime (the process and its children it waited for), in clock ticks,
    from the text of /proc/<pid>/stat."""
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(v) for v in fields[11:15])


def tree_cpu_seconds(root: int, proc: Path = PROC) -> float:
    """CPU seconds used so far by ``root``'s tree (live processes, and the children they waited for)."""
    ticks = 0
    for pid in tree(root, proc):
        try:
            ticks += parse_cpu_ticks((proc / str(pid) / "stat").read_text())
        except (OSError, ValueError):
            continue  # gone while it was read
    return ticks / os.sysconf("SC_CLK_TCK")


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


def parse_pss_kib(smaps: str) -> int | None:
    """The sum of the ``Pss:`` lines of /proc/<pid>/smaps_rollup (one line) or /proc/<pid>/smaps
    (one per mapping), in KiB; None when the text has none (``Pss_Anon:`` and the like are parts of it)."""
    total, found = 0, False
    for line in smaps.splitlines():
        if line.startswith("Pss:"):
            total += int(line.split()[1])
            found = True
    return total if found else None


def pss_kib(pid: int, proc: Path = PROC) -> int | None:
    """The process's PSS in KiB: from smaps_rollup, else summed over smaps; None where neither can be read."""
    for name in ("smaps_rollup", "smaps"):
        try:
            value = parse_pss_kib((proc / str(pid) / name).read_text())
        except OSError:
            continue
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class TreeMemory:
    """One sample of a process tree: ``bytes`` is the memory figure (PSS; RSS for the ``rss_only``
    processes whose smaps could not be read), ``rss_bytes`` the sum of resident set sizes."""

    bytes: int
    rss_bytes: int
    processes: int
    rss_only: int = 0

    @property
    def measure(self) -> str:
        """How ``bytes`` was measured, in words for peers.json and the report."""
        if not self.rss_only:
            return "pss"
        if self.rss_only >= self.processes:
            return "rss"
        return f"pss, rss for {self.rss_only} of {self.processes} processes"


def tree_memory(root: int, proc: Path = PROC) -> TreeMemory:
    """The PSS and RSS sums of ``root``'s tree (processes that exit while it is read are left out)."""
    pss_total = rss_total = count = rss_only = 0
    for pid in tree(root, proc):
        try:
            rss = parse_rss_kib((proc / str(pid) / "status").read_text())
        except OSError:
            continue
        pss = pss_kib(pid, proc)
        if pss is None:
            if not (proc / str(pid)).exists():
                continue  # gone between the two reads
            if rss:  # a zombie has neither and holds nothing
                rss_only += 1
            pss = rss
        count += 1
        pss_total += pss
        rss_total += rss
    return TreeMemory(bytes=pss_total * 1024, rss_bytes=rss_total * 1024, processes=count, rss_only=rss_only)


def tree_rss_bytes(root: int, proc: Path = PROC) -> int:
    return tree_memory(root, proc).rss_bytes


class MemorySampler:
    """Samples the tree's memory (``tree_memory``) every ``interval`` seconds on a thread, while in ``with``."""

    def __init__(self, root: int, interval: float = 0.5):
        self.root, self.interval = root, interval
        self.samples: list[TreeMemory] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(tree_memory(self.root))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(tree_memory(self.root))

    def record(self) -> dict[str, object]:
        """What a round keeps: the memory figure's samples, the RSS sums and how the figure was measured
        (the least complete sample's way: one that fell back to RSS anywhere says so)."""
        worst = max(self.samples, key=lambda s: s.rss_only / max(1, s.processes), default=None)
        return {"memory_bytes": [s.bytes for s in self.samples], "rss_bytes": [s.rss_bytes for s in self.samples],
                "memory_measure": worst.measure if worst else "pss"}


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
