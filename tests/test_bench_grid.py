"""The serving grid: its points, the rule that picks an image's defaults, the per-request breakdown."""

from __future__ import annotations

import uuid

import pytest

from slipway.benchmark import grid, report
from slipway.stages.bench import BenchSettings


def _result(point: dict, c1: float, c8: float, p50: float) -> dict:
    return {"point": point, "load": [
        {"concurrency": 1, "requests": 100, "requests_per_s": c1, "latency_ms": {"p50": p50}},
        {"concurrency": 8, "requests": 100, "requests_per_s": c8, "latency_ms": {"p50": p50 * 4}}]}


def P(slots: int, threads: int, batch: int = 1, workers: int = 1, default: bool = False) -> dict:
    return grid.point(slots, threads, workers=workers, batch_max=batch, batch_delay_ms=2 if batch > 1 else 0,
                      default=default)


def W(workers: int, threads: int, default: bool = False) -> dict:
    return P(workers, threads, workers=workers, default=default)


def test_points_split_the_cpus_into_workers_where_the_runtime_has_them_and_batch_where_it_batches():
    # cpp: worker processes too (its decoding is Python); it does not batch.
    assert grid.points(2, "cpp") == [P(1, 1), P(1, 2), P(2, 1), W(2, 1, default=True)]
    # tensorflow: one process; the service's default there (2 slots x 2 threads) is a point of its own.
    assert grid.points(2, "tensorflow") == [P(1, 1), P(1, 2), P(2, 1), P(2, 2, default=True)]
    # onnx and torchscript on CPUs: the default is one worker process per CPU, one thread each.
    assert grid.points(2, "onnx") == [P(1, 1), P(1, 2), P(2, 1), W(2, 1, default=True), P(1, 2, 8)]
    assert grid.points(4, "torchscript") == [P(1, 1), P(1, 4), P(2, 2), P(4, 1), W(2, 2), W(4, 1, default=True),
                                             P(1, 4, 8)]
    # On a GPU the service keeps one process: its default is slots x 2 threads.
    assert grid.points(2, "torchscript", "gpu")[-1] == P(2, 2, default=True)
    assert grid.points(1, "tensorflow") == [P(1, 1, default=True)]
    assert grid.points(1, "onnx") == [P(1, 1, default=True), P(1, 1, 8)]
    for cpus in (1, 2, 3, 4, 6):
        for runtime in ("torchscript", "onnx", "cpp", "tensorflow"):
            flagged = [p for p in grid.points(cpus, runtime) if p.get("default")]
            assert len(flagged) == 1, (cpus, runtime)
            workers, slots, threads = grid.default_parallelism(cpus, runtime, "cpu")
            assert grid.knobs(flagged[0]) == (workers, slots, threads, 1, 0)
    assert grid.env(W(2, 1)) == {"SLIPWAY_WORKERS": "2", "SLIPWAY_SLOTS": "2", "SLIPWAY_THREADS": "1",
                                 "THREADS": "1", "SLIPWAY_BATCH_MAX": "1", "SLIPWAY_BATCH_DELAY_MS": "0"}
    assert grid.env(P(2, 1))["SLIPWAY_WORKERS"] == "1"
    # A point recorded before workers existed runs in one process.
    assert grid.env({"slots": 2, "threads": 1, "batch_max": 1, "batch_delay_ms": 0})["SLIPWAY_WORKERS"] == "1"
    assert "THREADS" not in grid.image_env(P(2, 1))
    assert grid.label(W(2, 1)) == "2 workers x 1 thread" and grid.label(P(2, 1)) == "2 slots x 1 thread"


@pytest.mark.parametrize(("cpus", "backend", "device", "batch_max", "expected"), [
    (2, "torchscript", "cpu", None, (2, 2, 1)),
    (4, "onnx", "cpu", 1, (4, 4, 1)),
    (2, "onnx", "cpu", 8, (1, 2, 2)),         # batching: one process
    (2, "torchscript", "gpu", None, (1, 2, 2)),
    (1, "torchscript", "cpu", None, (1, 1, 1)),
    (2, "cpp", "cpu", None, (2, 2, 1)),
    (4, "tensorflow", "cpu", None, (1, 4, 2)),
])
def test_the_grid_takes_the_services_default(cpus, backend, device, batch_max, expected):
    """The bench's default point is the service's own rule."""
    from serving import limits

    assert grid.default_parallelism(cpus, backend, device, batch_max) == expected
    assert limits.default_parallelism(cpus, backend, device, batch_max) == expected


def test_what_the_service_reports_is_checked_against_the_point():
    assert grid.reported_differs(W(2, 1), {"workers": 2, "slots": 2, "threads_per_slot": 1, "batch_max": 1}) == ""
    assert grid.reported_differs(P(2, 1), {"slots": 2, "threads_per_slot": 1}) == ""
    assert grid.reported_differs(P(1, 2), {"slots": 2, "threads_per_slot": 1}) == "slots=2 (asked 1), threads=1 (asked 2)"
    assert "no worker processes" in grid.reported_differs(W(2, 1), {"slots": 2, "threads_per_slot": 1})


def test_the_rule_takes_throughput_without_losing_single_client_latency():
    results = [_result(P(1, 2), 400, 420, 2.0),     # fastest lone client
               _result(P(2, 1), 380, 700, 2.15),    # within 10%: more throughput -> chosen
               _result(P(1, 2, 8), 200, 900, 4.0)]  # most throughput, but twice the latency alone
    chosen = grid.choose(results, 8)
    assert chosen["point"] == P(2, 1)
    assert "700 req/s at c=8" in chosen["why"] and "+10%" in chosen["why"]
    assert chosen["eligible"] == ["1 slot x 2 threads", "2 slots x 1 thread"]


def test_ties_go_to_fewer_threads_then_no_batching_and_failures_are_skipped():
    results = [_result(P(1, 2), 300, 500, 2.0), _result(P(1, 1), 300, 495, 2.0),
               {"point": P(2, 1), "load": [], "reason": "the service refused SLIPWAY_SLOTS=2"}]
    assert grid.choose(results, 8)["point"] == P(1, 1)
    results = [_result(P(1, 2, 8), 300, 500, 2.0), _result(P(1, 2), 300, 500, 2.0)]
    assert grid.choose(results, 8)["point"] == P(1, 2)
    assert grid.choose([{"point": P(1, 1), "load": [], "reason": "x"}], 8)["point"] is None


def test_server_timing_header_parses_into_milliseconds_per_stage():
    header = 'read;dur=0.041, decode;dur=1.2;desc="PNG", infer;dur=0.53, total;desc="no dur", bad;dur=x'
    assert grid.parse_server_timing(header) == {"read": 0.041, "decode": 1.2, "infer": 0.53}
    assert grid.parse_server_timing("") == {}


def test_stage_histograms_give_the_mean_of_the_requests_between_two_scrapes():
    def scrape(n: int, decode_s: float) -> str:
        return "\n".join([
            "# HELP slipway_stage_seconds Time of each stage of a predict request.",
            "# TYPE slipway_stage_seconds histogram",
            f'slipway_stage_seconds_bucket{{stage="decode",le="0.005"}} {n}',
            f'slipway_stage_seconds_sum{{stage="decode"}} {decode_s}',
            f'slipway_stage_seconds_count{{stage="decode"}} {n}',
            'slipway_stage_seconds_sum{stage="infer"} 0.0',
            'slipway_stage_seconds_count{stage="infer"} 0.0',
            'slipway_requests_total{code="200"} 5.0'])

    before, after = grid.parse_stage_metrics(scrape(10, 0.01)), grid.parse_stage_metrics(scrape(110, 0.21))
    assert before["decode"] == {"count": 10, "sum_s": 0.01, "mean_ms": 1.0}
    assert grid.stage_delta(before, after) == {"decode": 2.0, "infer": None}


def test_tuned_image_dockerfile_only_adds_env_and_labels():
    text = grid.dockerfile("base:tag", P(2, 1), "sha256:abc", cpus=2)
    lines = text.splitlines()
    assert lines[0] == "FROM base:tag"
    assert lines[1] == "ENV SLIPWAY_WORKERS=1 SLIPWAY_SLOTS=2 SLIPWAY_THREADS=1 SLIPWAY_BATCH_MAX=1 SLIPWAY_BATCH_DELAY_MS=0"
    assert all(line.startswith(("LABEL ", "      ")) for line in lines[2:])
    assert 'dev.slipway.serving.tuned-from="sha256:abc"' in text
    assert 'dev.slipway.serving.workers="1"' in text
    assert 'dev.slipway.serving.workers="2"' in grid.dockerfile("base:tag", W(2, 1), "sha256:abc", cpus=2)
    # The default flag is the grid's, not a knob: a tuned image from the default point sets the same ENV.
    assert grid.image_env(W(2, 1, default=True)) == grid.image_env(W(2, 1))
    assert 'dev.slipway.serving.measured-cpus="2"' in text


def test_the_choice_is_compared_with_the_services_default():
    results = [_result(P(1, 2), 400, 420, 2.0), _result(P(2, 1), 380, 700, 2.15),
               _result(W(2, 1, default=True), 390, 560, 2.1)]
    chosen = grid.choose(results, 8)
    assert chosen["point"] == P(2, 1)
    d = chosen["default"]
    assert d["point"] == W(2, 1, default=True) and not d["is_chosen"]
    assert (d["requests_per_s"], d["p50_ms_c1"], d["throughput_ratio"], d["p50_ratio"]) == (560, 2.1, 1.25, 1.024)
    assert grid.default_text(chosen, 8) == ("2 slots x 1 thread chosen over the default 2 workers x 1 thread: "
                                            "700 vs 560 req/s at c=8 (1.25x), p50 at c=1 2.15 vs 2.10 ms (1.02x)")
    # Equal throughput: the tie goes to one process over two workers (a model copy fewer).
    tie = [_result(W(2, 1, default=True), 390, 700, 2.1), _result(P(2, 1), 390, 700, 2.1)]
    assert grid.choose(tie, 8)["point"] == P(2, 1)
    alone = grid.choose([_result(W(2, 1, default=True), 390, 700, 2.1)], 8)
    assert alone["default"]["is_chosen"] and grid.default_text(alone, 8).startswith("the default, 2 workers")


def test_table_shows_the_grid_the_choice_and_the_breakdown():
    points = [_result(P(1, 2), 400, 420, 2.0), _result(P(2, 1), 380, 700, 2.15),
              {**_result(W(2, 1, default=True), 390, 560, 2.1), "reported": {"slots": 2, "threads_per_slot": 1}}]
    load = {"concurrency": 1, "requests_per_s": 100.0, "latency_ms": {"p50": 1.0, "p95": 2.0}, "errors": {},
            "breakdown_ms": {"decode": 0.5, "infer": 0.6}}
    results = {"served": {"onnx-cpu": {"load": [load]}},
               "grid": {"target": 8, "seconds": 3, "rule": grid.RULE, "images": {
                   "onnx-cpu": {"points": points, "chosen": grid.choose(points, 8)},
                   "tensorflow-gpu": {"reason": "GPU image; this machine has no GPU"}}}}
    text = "\n".join(grid.markdown(results))
    assert "| onnx-cpu | 1 | 0.500 | 0.600 |" in text
    assert "| onnx-cpu | 1 slot x 2 threads | 400 | 420 | 2.00 |  |" in text
    assert "|  | 2 slots x 1 thread | 380 | 700 | 2.15 | **chosen** |" in text
    assert "|  | 2 workers x 1 thread | 390 | 560 | 2.10 | default, ran with no worker processes" in text
    assert "- onnx-cpu: 2 slots x 1 thread chosen over the default 2 workers x 1 thread: 700 vs 560" in text
    assert "| tensorflow-gpu | - | - | - | - | GPU image; this machine has no GPU |" in text
    assert grid.RULE in text
    assert "### Serving grid" in report.markdown({**results, "machine": {}})


def test_grid_settings_from_the_environment(monkeypatch):
    assert BenchSettings.resolve().grid is True
    monkeypatch.setenv("SLIPWAY_BENCH_GRID", "0")
    monkeypatch.setenv("SLIPWAY_BENCH_GRID_SECONDS", "1.5")
    s = BenchSettings.resolve()
    assert (s.grid, s.grid_seconds) == (False, 1.5)


@pytest.mark.docker
def test_tuned_image_is_the_built_image_plus_env_and_labels(local_services, tmp_path):
    from slipway import engine

    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /built\nENV THREADS=2\n")
    tag = f"slipway-bench-test/tune-{uuid.uuid4().hex[:8]}:1"
    base_id = engine.build(tmp_path, tag, timeout=300)
    try:
        new_id = grid.derive_image(base_id, tag, P(2, 1), cpus=2, log=lambda _: None)
        assert new_id != base_id
        info = engine.image_inspect(tag)
        config, layers = info["Config"], info["RootFS"]["Layers"]
        assert layers == engine.image_inspect(base_id)["RootFS"]["Layers"]  # no file changed
        assert {"THREADS=2", "SLIPWAY_SLOTS=2", "SLIPWAY_THREADS=1"} <= set(config["Env"])
        assert config["Labels"]["dev.slipway.serving.tuned-from"] == base_id
        # The built image is still there, by its ID and a local tag, for a second tuning.
        assert engine.image_id(grid.untuned_tag(tag)) == base_id
    finally:
        for ref in (tag, grid.untuned_tag(tag)):
            engine.remove_image(ref)


def test_tune_replaces_each_image_with_its_tuned_one_and_bench_reuses_that_grid(tmp_path, monkeypatch):
    """--tune: images.json then names the tuned image (tuned_from: the built one); the later bench
    reuses the grid measured on these very images, and measures again for an image rebuilt since."""
    import json
    from types import SimpleNamespace

    from plans import bare_plan

    from slipway import records, services
    from slipway.stages import bench

    built = {"variant": "onnx-cpu", "model": "m", "runtime": "onnx", "device": "cpu", "image": "r/onnx",
             "tag": "r/onnx:1.0", "id": "sha256:" + "a" * 64, "size": 1}
    (tmp_path / "images.json").write_text(json.dumps({"onnx-cpu": built}))

    plan = bare_plan("1.0.0", matrix={
        "images": [{"variant": "onnx-cpu", "model": "m", "framework": "pytorch", "runtime": "onnx", "device": "cpu",
                    "dockerfile": "dockerfiles/pytorch.Dockerfile", "target": "onnx-cpu",
                    "platforms": "linux/amd64", "image": "r/onnx"}],
        "export": [{"model": "m", "framework": "pytorch", "exporters": "onnx"}]})
    ctx = SimpleNamespace(out=tmp_path, log=lambda _m: None, plan=plan,
                          read=lambda rel, model, missing=records.REQUIRED: records.read(tmp_path / rel, model, missing),
                          write=lambda rel, record: records.write(tmp_path / rel, record),
                          config=SimpleNamespace(smoke=SimpleNamespace(cpus=2.0)))
    points = [_result(P(1, 2), 400, 420, 2.0), _result(P(2, 1), 390, 700, 2.1)]
    measured: list[str] = []

    def measure_grid(_ctx, entries, images, _settings):
        measured.extend(images)
        return records.BenchGrid(target=8, seconds=3, cpus=2, rule=grid.RULE, images={
            v: {"image_id": images[v].id, "points": points, "chosen": grid.choose(points, 8)} for v in images})

    derived: list[tuple] = []

    def derive_image(base_id, tag, point, cpus=None, log=None):
        derived.append((base_id, tag, point, cpus))
        return "sha256:" + "b" * 64

    monkeypatch.setattr(services, "ensure_docker", lambda log=None: "running")
    monkeypatch.setattr(bench, "measure_grid", measure_grid)
    monkeypatch.setattr(grid, "derive_image", derive_image)
    monkeypatch.setattr(bench, "_inspect", lambda ref: SimpleNamespace(id="sha256:" + "b" * 64, size=2, layers=[],
                                                                        labels={}))

    summary = bench.tune(ctx)["summary"]
    assert "onnx-cpu" in summary
    assert derived == [(built["id"], "r/onnx:1.0", P(2, 1), 2)]
    record = json.loads((tmp_path / "images.json").read_text())["onnx-cpu"]
    assert record["id"] == "sha256:" + "b" * 64 and record["tuned_from"] == built["id"]
    assert record["serving_defaults"] == {"SLIPWAY_WORKERS": "1", "SLIPWAY_SLOTS": "2", "SLIPWAY_THREADS": "1",
                                          "SLIPWAY_BATCH_MAX": "1", "SLIPWAY_BATCH_DELAY_MS": "0"}
    assert json.loads((tmp_path / "images" / "onnx-cpu.json").read_text()) == record

    # Tuning again starts from the built image, not from the tuned one.
    bench.tune(ctx)
    assert derived[-1][0] == built["id"]

    settings = bench.BenchSettings()
    measured.clear()
    entries = plan.matrix.images
    reused = bench._grid_for(ctx, entries, {"onnx-cpu": bench.EngineImage.model_validate(record)}, settings)
    assert not measured and reused.measured_by.startswith("slipway bench --tune")
    rebuilt = bench.EngineImage.model_validate({**record, "id": "sha256:" + "c" * 64})
    bench._grid_for(ctx, entries, {"onnx-cpu": rebuilt}, settings)
    assert measured == ["onnx-cpu"]


def test_the_grid_reads_what_the_service_says_it_runs_with(monkeypatch):
    from types import SimpleNamespace

    import httpx

    from slipway.stages import bench

    answers = {"http://s/v1/models/m": SimpleNamespace(status_code=200, json=lambda: {
        "name": "m", "parallelism": {"workers": 2, "slots": 2, "threads_per_slot": 1, "batch_max": 1}})}

    def get(url, timeout=None):
        if url not in answers:
            raise httpx.ConnectError("refused")
        return answers[url]

    monkeypatch.setattr(bench.httpx, "get", get)
    reported = bench._parallelism("http://s", "m")
    assert reported == {"workers": 2, "slots": 2, "threads_per_slot": 1, "batch_max": 1}
    assert grid.reported_differs(W(2, 1), reported) == ""
    assert grid.reported_differs(P(1, 2), reported).startswith("workers=2 (asked 1), slots=2 (asked 1)")
    assert bench._parallelism("http://other", "m") is None
