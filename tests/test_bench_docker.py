"""slipway bench against the real Docker engine: image sizes from docker save, a served image."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from image_cleanup import owns
from release_configs import small_release

from slipway import engine
from slipway.benchmark import grid as bench_grid
from slipway.benchmark import sizes
from slipway.cli import main

pytestmark = pytest.mark.docker


def test_image_sizes_compress_each_layer(local_services, tmp_path):
    """Two layers: random bytes (gzip cannot shrink them) and one repeated line (it shrinks to ~nothing)."""
    (tmp_path / "random.bin").write_bytes(os.urandom(3_000_000))
    (tmp_path / "text.txt").write_bytes(b"the same line again\n" * 200_000)
    (tmp_path / "Dockerfile").write_text(
        "FROM scratch\nCOPY random.bin /random.bin\nCOPY text.txt /text.txt\n"
    )
    tag = f"slipway-bench-test/sizes-{owns(uuid.uuid4().hex[:8])}:1"
    engine.build(tmp_path, tag, timeout=300)
    try:
        cache: dict = {}
        first = sizes.image_sizes(tag, cache)
        assert first["layer_count"] == 2 and not first["from_cache"]
        (rand,) = [x for x in first["largest_layers"] if "random.bin" in x["created_by"]]
        (text,) = [x for x in first["largest_layers"] if "text.txt" in x["created_by"]]
        assert 3_000_000 < rand["size"] < 3_010_000 and rand["gzip"] > 0.99 * 3_000_000
        assert text["size"] > 4_000_000 and text["gzip"] < 0.01 * text["size"]
        assert first["compressed_bytes"] == rand["gzip"] + text["gzip"]
        assert first["uncompressed_bytes"] == engine.image_inspect(tag)["Size"]
        # Layers are named by content: the second time nothing is saved or compressed.
        again = sizes.image_sizes(tag, cache)
        assert again["from_cache"] and again["compressed_bytes"] == first["compressed_bytes"]
        # One layer unknown: the image is saved again, the known layer is taken from the cache.
        cache.pop(text["diff_id"])
        third = sizes.image_sizes(tag, cache)
        assert not third["from_cache"] and third["compressed_bytes"] == first["compressed_bytes"]
    finally:
        engine.remove_image(tag)


@pytest.mark.slow
def test_bench_serves_an_image_and_checks_its_budgets(local_services, tmp_path, monkeypatch, capsys):
    """export -> images (pytorch-cpu) -> bench with short settings; generous budgets pass."""
    config = small_release(
        tmp_path / "release.toml", owns(f"bench-{uuid.uuid4().hex[:8]}"), "127.0.0.1:5000/slipway-bench-test",
        extra="""
        [budgets]
        max-image-mb = { pytorch-cpu = 100000 }
        max-ready-s = { pytorch-cpu = 300 }
        max-p95-ms = { torchscript = 100000 }
        """,
    )
    for key, value in {
        "RUNS": "4",
        "WARMUP": "1",
        "SECONDS": "1",
        "READY_RUNS": "2",
        "IMPORT_REPEATS": "0",
        "CONCURRENCY": "1,2",
        "GRID_SECONDS": "1",
    }.items():
        monkeypatch.setenv(f"SLIPWAY_BENCH_{key}", value)
    out = tmp_path / "dist"
    common = ["--config", str(config), "--out", str(out)]
    for stage in ("export", "images", "bench"):
        assert main([stage, *common]) == 0, capsys.readouterr().err
    results = json.loads((out / "bench" / "results.json").read_text())
    served = results["served"]["pytorch-cpu"]
    assert len(served["ready_s"]["runs"]) == 2 and served["ready_s"]["median"] > 0
    assert [load["concurrency"] for load in served["load"]] == [1, 2]
    for load in served["load"]:
        assert load["requests"] > 0 and not load["errors"]
        # The container's own CPU per request and its memory, read from its processes on this machine.
        assert 0 < load["cpu_ms_per_request"] < 10_000, load
        assert 10 < load["memory_mib"] < 2048 and load["memory_measure"], load
    image = results["sizes"]["images"]["pytorch-cpu"]
    assert 0 < image["compressed_bytes"] < image["uncompressed_bytes"]
    assert results["machine"]["docker_server"]
    assert results["budgets"]["ok"] and {c["status"] for c in results["budgets"]["checks"]} == {"ok"}
    table = (out / "bench" / "table.md").read_text()
    assert results["run_id"] in table and "| pytorch-cpu | torchscript |" in table
    assert "CPU ms / request" in table and f"{served['load'][0]['cpu_ms_per_request']:.2f}" in table
    # The serving grid: every point served and loaded, one chosen by the rule, shown in the table.
    grid = results["grid"]["images"]["pytorch-cpu"]
    # Slots x threads, worker processes, batching, and the service's default (flagged) on the smoke CPUs.
    assert [p["point"] for p in grid["points"]] == bench_grid.points(results["grid"]["cpus"], "torchscript"), grid
    # Batching may be refused by a model that takes no batch (the point then says why); the rest ran.
    assert all(p["load"] or (p["point"]["batch_max"] > 1 and p["reason"]) for p in grid["points"]), grid
    assert grid["chosen"]["point"] in [p["point"] for p in grid["points"]]
    assert "### Serving grid" in table and "**chosen**" in table and "default |" in table
    assert grid["chosen"]["default"]["point"]["default"] is True
    tag = json.loads((out / "images.json").read_text())["pytorch-cpu"]["tag"]
    engine.remove_image(tag)
