"""slipway bench: real measurements of the example model, budgets on them, and the release gate.

Nothing measured is mocked: the runtimes run the example export in their own processes; only the
number of iterations is small, so the numbers are rough and the tests check structure, not speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from readiness import wait_http

from slipway import records
from slipway.benchmark import budgets, report, served, stats
from slipway.benchmark.inprocess import CppEnv, Settings, find_cpp_wheel, import_time, measure_model
from slipway.cli import main
from slipway.config import BudgetsSpec

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "model_export" / "examples" / "weights" / "shapes_torch.pt"
ENTRY_POINT = "model_export.examples.torch_detector:build_model"
FEW = Settings(threads=2, warmup=2, runs=6, batch=3)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from model_export.examples.config import example_config
    from model_export.export import export_model

    out = tmp_path_factory.mktemp("bench-export") / "shapes-torch"
    export_model(example_config("pytorch"), out, version="0.0.1", git_commit="0" * 40, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def measured(export_dir, tmp_path_factory) -> dict:
    """One real in-process run of every PyTorch runtime on the export (few iterations)."""
    manifest = records.read(export_dir / "model.json", records.ModelManifest)
    wheels = tmp_path_factory.mktemp("no-wheels")
    wheel, reason = find_cpp_wheel(wheels)
    assert wheel is None
    return measure_model(
        export_dir,
        manifest,
        FEW,
        cpp=CppEnv(reason=reason),
        log=lambda _m: None,
        eager={"entry_point": ENTRY_POINT, "weights": str(WEIGHTS)},
    )


def results_of(measured: dict, variants: tuple[str, ...] = ()) -> dict:
    return {
        "run_id": "r1",
        "machine": {"fingerprint": "m1"},
        "scope": {"variants": list(variants)},
        "inprocess": {"models": {"shapes-torch": measured}},
        "served": {},
        "sizes": {"images": {}},
    }


# --------------------------------------------------------------------------------------------
# Statistics


def test_percentiles_agree_with_numpy():
    rng = np.random.default_rng(0)
    values = list(rng.exponential(10, size=37))
    for q in (0, 50, 95, 100):
        assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    s = stats.summarize([3.0, 1.0, 2.0])
    assert (s["n"], s["p50"], s["min"], s["max"]) == (3, 2.0, 1.0, 3.0)


# --------------------------------------------------------------------------------------------
# In-process


def test_every_runtime_is_measured_side_by_side(measured):
    assert list(measured) == ["eager", "torchscript", "cpp", "onnx"]
    for runtime in ("eager", "torchscript", "onnx"):
        r = measured[runtime]
        assert r["available"], r
        assert r["total"]["n"] == FEW.runs
        assert set(r["stages"]) == {"decode", "preprocess", "inference", "postprocess"}
        assert all(r["stages"][s]["p50"] > 0 for s in r["stages"])
        assert r["total"]["p95"] >= r["total"]["p50"] > 0
        # Image to detections: the total less decoding, measured per run.
        assert 0 < r["pipeline"]["p50"] < r["total"]["p50"]
        # Ratios against the eager baseline come from this very run, on image to detections.
        want = measured["eager"]["pipeline"]["p50"] / r["pipeline"]["p50"]
        assert r["speedup_vs_eager"]["p50"] == pytest.approx(want, rel=1e-3)
    assert measured["eager"]["speedup_vs_eager"]["p50"] == 1.0
    # The exported formats answer like the reference; the PIL baseline is only close to it.
    assert measured["torchscript"]["reference_check"]["ok"]
    assert measured["onnx"]["reference_check"]["ok"]
    assert measured["eager"]["reference_check"]["min_iou"] > 0.9


def test_a_missing_cpp_wheel_is_reported_never_faked(measured):
    cpp = measured["cpp"]
    assert cpp["available"] is False
    assert "slipway wheels" in cpp["reason"]
    assert "total" not in cpp and "speedup_vs_eager" not in cpp


def test_cpp_wheel_for_another_interpreter_is_not_used(tmp_path):
    other = "cp39" if sys.version_info[:2] != (3, 9) else "cp38"
    (tmp_path / f"slipway_runtime-0.1.0-{other}-{other}-manylinux_2_28_x86_64.whl").write_bytes(b"x")
    wheel, reason = find_cpp_wheel(tmp_path)
    assert wheel is None and "no slipway_runtime wheel for this interpreter" in reason


def test_an_unloadable_cpp_wheel_says_why(export_dir, tmp_path):
    """A 'wheel' whose module fails to import: the worker reports the import error."""
    site = tmp_path / "site" / "slipway_runtime"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(
        "raise ImportError('libtorch_cpu.so: cannot open shared object file')\n"
    )
    manifest = records.read(export_dir / "model.json", records.ModelManifest)
    out = measure_model(
        export_dir, manifest, FEW, cpp=CppEnv(site=site.parent), only=("cpp",), eager={}, log=lambda _m: None
    )
    assert out["cpp"]["available"] is False
    assert "libtorch_cpu.so" in out["cpp"]["reason"]


def test_import_time_in_a_fresh_interpreter():
    r = import_time("json", repeats=2)
    assert r["available"] and len(r["runs_s"]) == 2 and r["median_s"] >= 0
    missing = import_time("no_such_module_slipway", repeats=1)
    assert missing["available"] is False and "ModuleNotFoundError" in missing["reason"]


# --------------------------------------------------------------------------------------------
# Budgets, evaluated on the measured results


def test_impossible_p95_budget_is_exceeded(measured):
    checks = budgets.evaluate(
        BudgetsSpec(max_p95_ms={"torchscript": 0.001, "onnx": 1e6}), results_of(measured)
    )
    by_subject = {c.subject: c for c in checks}
    ts = by_subject["shapes-torch/torchscript"]
    assert ts.status == budgets.EXCEEDED and ts.failed
    assert ts.measured == pytest.approx(measured["torchscript"]["total"]["p95"], abs=0.01)
    assert by_subject["shapes-torch/onnx"].status == budgets.OK
    text = budgets.table([c for c in checks if c.failed])
    assert "budgets.max-p95-ms.torchscript" in text and "EXCEEDED" in text and "onnx" not in text


def test_cpp_speedup_budget_fails_when_the_wheel_was_not_measured(measured):
    checks = budgets.evaluate(BudgetsSpec(min_cpp_speedup=3.0), results_of(measured))
    assert [(c.budget, c.status) for c in checks] == [("budgets.min-cpp-speedup", budgets.NOT_MEASURED)]
    assert "slipway wheels" in checks[0].note


def test_cpp_speedup_budget_uses_the_same_runs_p50(measured):
    # The eager baseline measured against itself: speed-up exactly 1.
    fake_cpp = dict(measured["eager"])
    results = results_of({**measured, "cpp": fake_cpp})
    (check,) = budgets.evaluate(BudgetsSpec(min_cpp_speedup=1.0), results)
    assert check.status == budgets.OK and check.measured == 1.0
    (check,) = budgets.evaluate(BudgetsSpec(min_cpp_speedup=1.5), results)
    assert check.status == budgets.EXCEEDED


def test_variant_budgets_skip_variants_outside_the_run_and_fail_unmeasured_ones(measured):
    spec = BudgetsSpec(max_image_mb={"a": 100, "b": 100}, max_ready_s={"a": 5, "c": 5})
    results = results_of(measured, variants=("a", "c"))
    results["sizes"]["images"] = {"a": {"uncompressed_bytes": 150_000_000}}
    results["served"] = {
        "a": {"ready_s": {"runs": [1.0, 2.0, 9.0], "median": 2.0}},
        "c": {"reason": "no image"},
    }
    got = {(c.budget, c.status) for c in budgets.evaluate(spec, results)}
    assert got == {
        ("budgets.max-image-mb.a", budgets.EXCEEDED),
        ("budgets.max-image-mb.b", budgets.SKIPPED),
        ("budgets.max-ready-s.a", budgets.OK),
        ("budgets.max-ready-s.c", budgets.NOT_MEASURED),
    }


# --------------------------------------------------------------------------------------------
# Report


def test_report_shows_one_run_and_refuses_to_mix_runs(measured, tmp_path):
    results = results_of(measured)
    results.update(
        project="p",
        version="1.0.0",
        date="2026-01-01T00:00:00+00:00",
        settings={},
        machine={"fingerprint": "m1", "cpu_model": "cpu", "libraries": {"torch": "2"}},
    )
    checks = budgets.evaluate(BudgetsSpec(max_p95_ms={"torchscript": 0.001}), results)
    results["budgets"] = {"ok": False, "checks": [c.to_json() for c in checks]}
    md = report.markdown(results)
    assert "Run `r1`" in md and "machine `m1`" in md
    assert "TorchScript from Python" in md and "not available" in md
    assert "**EXCEEDED**" in md
    png = report.chart(results, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Installed without the bench extra: no chart, and no failure (the JSON and the table stand).
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "matplotlib", None)
        assert report.chart(results, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    report.check_same_run(results, dict(results))
    other = {**results, "run_id": "r2"}
    with pytest.raises(report.MixedRunsError):
        report.check_same_run(results, other)


# --------------------------------------------------------------------------------------------
# Served: the load generator against the real service, run as a process on loopback


def test_load_generator_only_talks_to_loopback():
    with pytest.raises(ValueError, match="loopback"):
        served.load_test("http://example.com:8080", "m", [b""], concurrency=1, seconds=0.1)


def test_load_generator_against_the_real_service(export_dir):
    from slipway.smoketest import free_port

    port = free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(export_dir),
        "BACKEND": "onnx",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:

        wait_http(f"{url}/readyz", timeout=60, proc=proc)
        bodies = [p.read_bytes() for p in sorted((export_dir / "golden").glob("*.png"))]
        for conc in (1, 4):
            r = served.load_test(url, "shapes-torch", bodies, concurrency=conc, seconds=1.0)
            assert r["concurrency"] == conc and r["requests"] > 0 and not r["errors"]
            assert r["requests_per_s"] == pytest.approx(r["requests"] / r["seconds"], rel=0.01)
            assert r["latency_ms"]["p95"] >= r["latency_ms"]["p50"] > 0
            assert r["server_total_ms"]["p50"] <= r["latency_ms"]["p50"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# The release gate: an impossible budget stops 'slipway release' before publish


def test_release_stops_before_publish_on_an_exceeded_budget(tmp_path, monkeypatch, capsys):
    config = tmp_path / "release.toml"
    config.write_text(
        textwrap.dedent(f"""
        [project]
        name = "bench-gate"
        version = "0.0.1"

        [[models]]
        name = "shapes-torch"
        framework = "pytorch"
        entry-point = "{ENTRY_POINT}"
        weights = "{WEIGHTS.as_posix()}"
        labels = ["circle", "square", "triangle"]
        exporters = ["torchscript"]
        golden = {{ hook = "model_export.examples.shapes:golden", count = 8, seed = 20201215 }}
        input = {{ height = 128, width = 128, channels = 3, mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }}

        [wheels]
        model = "shapes-torch"

        [budgets]
        max-p95-ms = {{ torchscript = 0.001 }}
    """)
    )
    for key, value in {"RUNS": "4", "WARMUP": "1", "IMPORT_REPEATS": "0", "SERVED": "0"}.items():
        monkeypatch.setenv(f"SLIPWAY_BENCH_{key}", value)
    out = tmp_path / "out"
    code = main(
        [
            "release",
            "--config",
            str(config),
            "--out",
            str(out),
            "--dry-run",
            "--skip",
            "wheels",
            "--skip",
            "images",
            "--skip",
            "smoke",
        ]
    )
    err = capsys.readouterr().err
    assert code == 4, err
    stages = json.loads((out / "stages.json").read_text())
    assert stages["export"]["status"] == "ok"
    assert stages["bench"]["status"] == "failed"
    assert "budgets.max-p95-ms.torchscript" in stages["bench"]["summary"]
    assert "publish" not in stages
    assert not (out / "release.json").exists()
    assert "budgets.max-p95-ms.torchscript" in err and "EXCEEDED" in err
    # The numbers that failed the release are kept, from one identified run.
    results = json.loads((out / "bench" / "results.json").read_text())
    assert results["run_id"] and len(results["machine"]["fingerprint"]) == 16
    assert results["machine"]["cpu_model"] and results["machine"]["libraries"]["torch"]
    assert results["budgets"]["ok"] is False
    assert results["inprocess"]["models"]["shapes-torch"]["torchscript"]["available"]
    assert "slipway wheels" in results["inprocess"]["models"]["shapes-torch"]["cpp"]["reason"]
    assert (out / "bench" / "table.md").read_text().count(results["run_id"]) == 1
    assert (out / "bench" / "chart.png").stat().st_size > 10_000


def test_settings_come_from_arguments_then_environment(monkeypatch):
    from slipway.errors import ConfigError
    from slipway.stages.bench import BenchSettings

    monkeypatch.setenv("SLIPWAY_BENCH_RUNS", "40")
    monkeypatch.setenv("SLIPWAY_BENCH_CONCURRENCY", "1,4,16")
    monkeypatch.setenv("SLIPWAY_BENCH_SERVED", "0")
    s = BenchSettings.resolve(runs=35)
    assert (s.runs, s.concurrency, s.served, s.threads) == (35, (1, 4, 16), False, 2)
    assert BenchSettings.resolve().runs == 40
    monkeypatch.setenv("SLIPWAY_BENCH_THREADS", "two")
    with pytest.raises(ConfigError, match="SLIPWAY_BENCH_THREADS"):
        BenchSettings.resolve()


def test_speedups_compare_image_to_detections_and_cpp_overhead_is_against_its_forward():
    from slipway.benchmark.inprocess import add_ratios

    runtimes = {
        "eager": {"available": True, "total": {"p50": 4.0, "p95": 5.0}, "pipeline": {"p50": 3.0, "p95": 4.0},
                  "stages": {"inference": {"p50": 2.0}}, "stages_split_by": "python"},
        "cpp": {"available": True, "total": {"p50": 1.6, "p95": 2.0}, "pipeline": {"p50": 1.0, "p95": 1.25},
                "stages": {"inference": {"p50": 0.9}}, "stages_split_by": "runtime"},
    }
    add_ratios(runtimes)
    assert runtimes["cpp"]["speedup_vs_eager"] == {"p50": 3.0, "p95": 3.2}
    assert runtimes["cpp"]["pipeline_over_forward"] == pytest.approx(1.111, abs=1e-3)
    # Only a runtime that times its own forward pass gets the overhead ratio.
    assert "pipeline_over_forward" not in runtimes["eager"]


# --------------------------------------------------------------------------------------------
# Where the images come from: a GitHub bench job has only the records it downloaded


def test_bench_pulls_recorded_digests_as_smoke_does_and_measures_what_it_pulled(tmp_path, monkeypatch):
    """On GitHub the bench job sees no images.json and an empty engine, only images/<variant>.json:
    a pushed digest is pulled by digest (never by tag) and that reference is what is measured; a
    local build is used as it is, a variant outside the run is left alone, and an image that
    cannot be pulled is reported, so its budgets fail as not measured."""
    from types import SimpleNamespace

    from slipway import engine, services
    from slipway.benchmark import sizes
    from slipway.stages import bench

    repo = "ghcr.io/acme/det"
    digest = {name: "sha256:" + c * 64 for name, c in (("alpha", "a"), ("gone", "b"), ("gpu", "c"))}
    record_dir = tmp_path / "images"
    record_dir.mkdir()
    for variant in ("alpha", "gone", "gpu"):
        (record_dir / f"{variant}.json").write_text(json.dumps({
            "variant": variant, "model": "m", "runtime": "onnx", "device": "gpu" if variant == "gpu" else "cpu",
            "image": f"{repo}-{variant}", "tag": f"{repo}-{variant}:1.2.3", "digest": digest[variant],
            "dry_run": False,
        }))
    local = {"variant": "local", "model": "m", "runtime": "onnx", "device": "cpu", "image": f"{repo}-local",
             "tag": f"{repo}-local:1.2.3", "id": "sha256:" + "d" * 64}
    (tmp_path / "images.json").write_text(json.dumps({"local": local}))

    pulls: list[str] = []

    def pull(ref, timeout=None):
        pulls.append(ref)
        if "-gone@" in ref:
            raise engine.ImageNotFound(f"pull {ref}: manifest unknown", status=404)
        return f"sha256:{'e' * 64}"

    monkeypatch.setattr(engine, "pull", pull)
    monkeypatch.setattr(services, "ensure_docker", lambda log=None: "running")
    ctx = SimpleNamespace(out=tmp_path, log=lambda _m: None,
                          config=SimpleNamespace(wheels=SimpleNamespace(max_size_mib=100)))
    # "gpu" is not in this run.
    entries = [records.ImageEntry.model_construct(variant=v) for v in ("alpha", "gone", "local")]

    images = bench.images_in_engine(ctx, entries)

    pulled = f"{repo}-alpha@{digest['alpha']}"
    # An absent digest is a final answer: pulled once, never retried.
    assert pulls == [pulled, f"{repo}-gone@{digest['gone']}"]
    assert (images["alpha"].tag, images["alpha"].id) == (pulled, "sha256:" + "e" * 64)
    assert records.dump(images["local"]) == local
    assert "manifest unknown" in images["gone"].unavailable
    assert images["gpu"].tag == f"{repo}-gpu:1.2.3" and images["gpu"].id is None

    measured_refs: list[str] = []

    def image_sizes(ref, _cache):
        measured_refs.append(ref)
        return {"uncompressed_bytes": 100_000_000, "compressed_bytes": 40_000_000}

    monkeypatch.setattr(sizes, "image_sizes", image_sizes)
    monkeypatch.setattr(sizes, "cache_path", lambda: tmp_path / "size-cache.json")
    result = bench.measure_sizes(ctx, entries, images, [], docker_ok=True)
    assert measured_refs == [pulled, local["tag"]]
    assert "manifest unknown" in result["images"]["gone"]["reason"]
    checks = budgets.evaluate(BudgetsSpec(max_image_mb={"alpha": 50, "gone": 500, "gpu": 1}),
                              {"scope": {"variants": ["alpha", "gone", "local"]}, "sizes": result})
    assert [(c.subject, c.status) for c in checks] == [
        ("alpha", budgets.EXCEEDED), ("gone", budgets.NOT_MEASURED), ("gpu", budgets.SKIPPED)
    ]


def test_a_save_that_fails_is_a_service_error_with_the_engines_words(monkeypatch):
    """docker save can end with nothing (the engine's disk full, say): a ServiceError naming the
    image, not a tar traceback; an engine that refuses the save is its EngineError (a ServiceError)."""
    from slipway import engine
    from slipway.benchmark import sizes
    from slipway.errors import ServiceError

    monkeypatch.setattr(engine, "image_inspect",
                        lambda ref: {"Id": "sha256:0", "Size": 1, "RootFS": {"Layers": ["sha256:1"]}})
    monkeypatch.setattr(engine, "save", lambda ref: iter([b""]))
    with pytest.raises(ServiceError, match=r"docker save example:1 failed: no image in its output"):
        sizes.layer_sizes("example:1", {})

    def refused(ref):
        raise engine.EngineError("save example:1: the engine answered 500: write /var/lib/docker/tmp/"
                                 "docker-export: no space left on device", status=500)
        yield b""

    monkeypatch.setattr(engine, "save", refused)
    with pytest.raises(ServiceError, match=r"save example:1: .*no space left on device"):
        sizes.layer_sizes("example:1", {})
