"""One way for the tests to wait for something to come up: poll until a deadline, returning early.

``wait_until(check, ...)`` calls ``check`` at once, then after short waits that grow from 10 ms
to at most 250 ms, and returns the first truthy value it gives. It stops early, with the reason,
when ``gone`` says the thing waited for has died (a process that exited, a container that
stopped), and at the deadline raises ``NotReady`` with the last thing ``check`` saw and, when
given, the end of a log file. No fixed sleeps: a service ready in 30 ms is seen in about 30 ms.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")

FIRST_WAIT = 0.01
MAX_WAIT = 0.25


class NotReady(AssertionError):
    """What was waited for did not come (an AssertionError: the test fails, it does not error)."""


def _log_tail(log: Path | None, lines: int = 40) -> str:
    if log is None:
        return ""
    try:
        return "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def process_gone(proc: subprocess.Popen) -> Callable[[], str | None]:
    """For ``gone``: the exit status of ``proc`` once it has exited, else None."""
    return lambda: None if proc.poll() is None else f"the process exited with {proc.returncode}"


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    what: str,
    gone: Callable[[], str | None] | None = None,
    log: Path | None = None,
) -> T:
    """The first truthy value of ``check()``, polled with growing short waits until ``timeout``.

    An exception from ``check`` counts as "not yet" (its type and message become the last thing
    seen). ``gone()`` returning a reason stops the wait at once with NotReady.
    """
    deadline = time.monotonic() + timeout
    wait = FIRST_WAIT
    last = "nothing yet"
    while True:
        try:
            value = check()
            if value:
                return value
            last = repr(value)
        except Exception as exc:  # "not ready" may be any failure of the probe
            last = f"{type(exc).__name__}: {exc}"
        reason = gone() if gone is not None else None
        if reason:
            raise NotReady(f"{what}: {reason} before it was ready (last: {last}){_log_tail(log)}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotReady(f"{what}: not ready after {timeout:g}s (last: {last}){_log_tail(log)}")
        time.sleep(min(wait, left))
        wait = min(wait * 2, MAX_WAIT)


def http_ok(url: str, *, status: int = 200) -> Callable[[], bool]:
    """For ``check``: ``url`` answers ``status`` (a short timeout per request)."""

    def probe() -> bool:
        r = httpx.get(url, timeout=2)
        if r.status_code != status:
            raise NotReady(f"{url} answered {r.status_code}: {r.text[:200]}")
        return True

    return probe


def wait_http(
    url: str,
    *,
    timeout: float = 60,
    status: int = 200,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> float:
    """Wait until ``url`` answers ``status``; the seconds it took. ``proc``: the server's process,
    whose exit ends the wait early; ``log``: its log, quoted when the wait fails."""
    started = time.monotonic()
    wait_until(http_ok(url, status=status), timeout=timeout, what=url,
               gone=process_gone(proc) if proc is not None else None, log=log)
    return time.monotonic() - started


def wait_port(host: str, port: int, *, timeout: float = 30, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    """Wait until something accepts connections on ``host:port``."""

    def accepts() -> bool:
        with socket.create_connection((host, port), timeout=1):
            return True

    wait_until(accepts, timeout=timeout, what=f"{host}:{port}",
               gone=process_gone(proc) if proc is not None else None, log=log)
