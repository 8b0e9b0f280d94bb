"""serving/memory.py: the allocator keeps freed memory (no page fault per request), and the service
process drops the framework's library pages only its import used, without harm to the framework.

Each case runs in a fresh interpreter: allocator settings and dropped mappings are process-wide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and /proc are Linux's")


def _run(code: str, env: dict[str, str] | None = None) -> dict:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# A request's arrays, as a worker makes them: images of several sizes preprocessed to one input.
FAULTS_PER_CALL = """
    import json, resource, sys
    from serving.memory import tune_allocator
    tuned = tune_allocator() if sys.argv[-1] == "tune" else False
    import numpy as np
    from model_export.preprocess import preprocess
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((288, 448), (720, 1280), (224, 320))]
    spec = {"height": 256, "width": 384}
    for i in range(6):
        preprocess(images[i % 3], spec)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(60):
        preprocess(images[i % 3], spec)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 60
    print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _faults(mode: str, env: dict[str, str] | None = None) -> dict:
    return _run(FAULTS_PER_CALL.replace('sys.argv[-1] == "tune"', repr(mode == "tune")), env)


def test_the_tuned_allocator_takes_no_page_fault_per_request():
    default, tuned = _faults("default"), _faults("tune")
    # glibc's defaults hand the arrays' pages back and fault them in again on every call.
    assert default["faults"] > 100, default
    assert tuned["tuned"] is True
    assert tuned["faults"] < 5, tuned


def test_the_users_allocator_variables_win():
    kept = _faults("tune", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert kept["tuned"] is False
    assert kept["faults"] > 100, kept


def test_the_framework_pages_only_its_import_used_are_dropped_and_it_still_runs():
    result = _run("""
        import json
        import torch
        from serving.memory import _mappings, release_framework_pages
        from pathlib import Path
        root = str(Path(torch.__file__).resolve().parent) + "/"
        def by_kind():
            clean = modified = 0
            for start, end, perms, path, rss, anonymous in _mappings():
                if path.startswith(root):
                    if "w" in perms or anonymous:
                        modified += rss
                    else:
                        clean += rss
            return clean, modified
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 8, 3).eval()
        x = torch.randn(1, 3, 32, 32)
        with torch.inference_mode():
            want = conv(x)
        clean_before, modified_before = by_kind()
        released = release_framework_pages("torch")
        clean_after, modified_after = by_kind()
        with torch.inference_mode():
            again = conv(x)
        print(json.dumps({"released": released, "clean_before": clean_before, "clean_after": clean_after,
                          "modified_before": modified_before, "modified_after": modified_after,
                          "same": bool(torch.equal(want, again)), "absent": release_framework_pages("no_such")}))
    """)
    assert result["released"] > 20 << 20, result  # libtorch's operator registrations alone are more
    assert result["released"] <= result["clean_before"]
    assert result["clean_after"] < result["clean_before"] - result["released"] // 2
    assert result["modified_after"] >= result["modified_before"] * 0.95, "a page the process modified was dropped"
    assert result["same"] is True
    assert result["absent"] == 0
