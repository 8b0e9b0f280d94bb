"""tests/readiness.py: returns as soon as the check passes, stops when the process dies."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from readiness import NotReady, process_gone, wait_http, wait_until


def test_returns_the_first_truthy_value_without_waiting_a_fixed_time():
    calls = []

    def check():
        calls.append(time.monotonic())
        return "ready" if len(calls) == 3 else None

    started = time.monotonic()
    assert wait_until(check, timeout=10, what="thing") == "ready"
    # Two short waits (10 ms, 20 ms), not a fixed sleep per round.
    assert time.monotonic() - started < 0.5


def test_the_deadline_names_what_was_last_seen(tmp_path):
    log = tmp_path / "service.log"
    log.write_text("line one\nthe reason it failed\n")

    def check():
        raise ConnectionError("refused")

    with pytest.raises(NotReady, match=r"thing: not ready after 0\.2s \(last: ConnectionError: refused\)") as err:
        wait_until(check, timeout=0.2, what="thing", log=log)
    assert "the reason it failed" in str(err.value)


def test_a_process_that_exits_ends_the_wait_at_once():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    started = time.monotonic()
    with pytest.raises(NotReady, match="exited with 3"):
        wait_http("http://127.0.0.1:9/readyz", timeout=60, proc=proc)
    assert time.monotonic() - started < 5
    assert process_gone(proc)() == "the process exited with 3"
