"""The peer benchmark's parsing, statistics and report, from a recorded run (no peer is installed here).

``fixtures/bench/peers-run.json`` is a ``peers.json`` written by ``slipway bench --peers`` (a short
run: 2 rounds of 3 s, on a busy 2-CPU machine); the report is rebuilt from it alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slipway.benchmark import procs
from slipway.benchmark.peers import envs, report, results, servers, spec
from slipway.benchmark.peers.run import PeerSettings, check_against_reference
from slipway.cli import main
from slipway.errors import ConfigError

RECORDED = Path(__file__).parent / "fixtures" / "bench" / "peers-run.json"


@pytest.fixture()
def recorded() -> dict:
    return json.loads(RECORDED.read_text())


def _round(r: int, rates: dict[int, float], p50: dict[int, float], memory: list[int]) -> dict:
    return {"round": r, "ready_s": 1.0 + r, "memory_bytes": memory,
            "levels": [{"concurrency": c, "requests": int(v * 10), "requests_per_s": v, "errors": {},
                        "latency_ms": {"p50": p50[c], "p95": p50[c] * 2}} for c, v in rates.items()]}


def test_medians_over_rounds_and_memory_is_the_median_of_each_rounds_peak():
    rounds = [_round(1, {1: 100.0, 8: 300.0}, {1: 10.0, 8: 30.0}, [100 * results.MIB, 300 * results.MIB]),
              _round(2, {1: 120.0, 8: 200.0}, {1: 8.0, 8: 40.0}, [250 * results.MIB]),
              _round(3, {1: 110.0, 8: 250.0}, {1: 9.0, 8: 35.0}, [200 * results.MIB, 280 * results.MIB])]
    s = results.summarize_config(rounds)
    assert s["levels"]["1"] == {"rounds": 3, "requests_per_s": 110.0, "p50_ms": 9.0, "p95_ms": 18.0, "errors": 0}
    assert s["levels"]["8"]["requests_per_s"] == 250.0
    assert s["memory_mib"] == 280  # peaks 300, 250, 280
    # These rounds were recorded before PSS: their figure is the RSS sum, and the summary says so.
    assert s["memory_measure"] == "rss" and s["rss_mib"] is None
    for r, rss in zip(rounds, ([400, 500], [350], [380]), strict=True):
        r.update(memory_measure="pss", rss_bytes=[m * results.MIB for m in rss])
    s = results.summarize_config(rounds)
    assert (s["memory_mib"], s["memory_measure"], s["rss_mib"]) == (280, "pss", 380)
    assert s["ready_s"] == 3.0


def test_rounds_are_interleaved_so_no_server_always_goes_first():
    keys = ["a", "b", "c"]
    orders = [results.round_order(keys, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert {o[0] for o in orders} == set(keys)
    assert results.round_order([], 2) == []


def _config(key: str, server: str, c1: float, c8: float, mem: int) -> dict:
    return {"key": key, "server": server, "summary": {"memory_mib": mem, "levels": {
        "1": {"requests_per_s": c1}, "8": {"requests_per_s": c8}}}}


def test_goals_compare_each_image_with_the_best_peer_and_the_leanest_one():
    configs = [_config("slipway-a", "slipway", 300, 400, 200), _config("slipway-b", "slipway", 300, 500, 900),
               _config("ts", "torchserve", 250, 480, 800), _config("lit", "litserve", 310, 410, 700)]
    goals = {g["key"]: g for g in results.goals(configs, [1, 8])}
    a = {ch["what"]: ch for ch in goals["slipway-a"]["checks"]}
    assert a["req/s at c=1"]["peer_key"] == "lit" and not a["req/s at c=1"]["met"]
    assert a["req/s at c=8"]["peer_key"] == "ts" and not a["req/s at c=8"]["met"]
    assert a["memory under load (MiB)"] == {"what": "memory under load (MiB)", "slipway": 200, "peer": 700,
                                            "peer_key": "lit", "met": True, "ratio": 0.29}
    b = {ch["what"]: ch["met"] for ch in goals["slipway-b"]["checks"]}
    assert b == {"req/s at c=1": False, "req/s at c=8": True, "memory under load (MiB)": False}
    assert goals["slipway-a"]["met"] is False
    # Without a peer there is nothing to meet or miss.
    assert results.goals(configs[:1], [1, 8])[0]["met"] is None


def test_report_from_the_recorded_run(recorded):
    md = report.markdown(recorded)
    # One row per configuration, every one of them with detections equal to the reference.
    for c in recorded["configs"]:
        assert f"| {c['label']} |" in md
        assert c["check"]["ok"]
    assert md.count("| equal |") == len(recorded["configs"])
    assert "## Settings" in md and "## Machine" in md and "## Goals" in md
    assert recorded["machine"]["cpu_model"] in md
    # The recorded machine was busy: the report says the numbers do not compare the servers.
    assert "The machine was busy" in md
    # The best req/s of each column is bold, and it is the largest median in the data.
    top8 = max(results.rate(c, 8) for c in recorded["configs"])
    assert f"**{top8:,.0f}**" in md
    for g in recorded["goals"]:
        assert f"- {g['key']}:" in md


def test_chart_is_well_formed_svg_with_a_bar_per_configuration_and_level(recorded):
    svg = report.svg(recorded)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    rects = [e for e in root.iter() if e.tag.endswith("rect")]
    n = len([c for c in recorded["configs"] if c.get("summary")])
    levels = len(recorded["settings"]["concurrency"])
    # background, stripes (every other row), rate bars, memory bars, legend boxes
    assert len(rects) == 1 + (n + 1) // 2 + n * levels + n + levels
    texts = " ".join(e.text or "" for e in root.iter() if e.tag.endswith("text"))
    for c in recorded["configs"]:
        assert c["label"][:20] in texts


def test_report_says_what_failed():
    data = {"settings": {"concurrency": [1, 8]}, "machine": {}, "goals": [],
            "configs": [{"key": "bentoml-per-cpu", "server": "bentoml", "label": "BentoML", "settings": "2 workers",
                         "rounds": [], "summary": None, "check": None,
                         "failures": ["round 1: BentoML did not answer within 180s"]}]}
    md = report.markdown(data)
    assert "| BentoML | 2 workers | - | - | - | - | - | - | not checked |" in md
    assert "- bentoml-per-cpu: round 1: BentoML did not answer within 180s" in md
    assert "no Slipway image was measured" in md
    ET.fromstring(report.svg(data))


def test_detections_are_checked_against_the_reference():
    det = {"box": [1.0, 2.0, 30.0, 40.0], "score": 0.9, "class_id": 1, "label": "square"}
    ref = [{"file": "000.png", "detections": [det]}]
    assert check_against_reference([[det]], ref, {})["ok"]
    moved = {**det, "box": [1.5, 2.0, 30.5, 40.0]}
    bad = check_against_reference([[moved]], ref, {"iou": 0.99, "score": 1e-4})
    assert not bad["ok"] and bad["min_iou"] < 0.99
    assert not check_against_reference([[]], ref, {})["ok"]


def test_cpu_lists_parse_as_taskset_takes_them():
    assert servers.parse_cpus("0,1") == [0, 1]
    assert servers.parse_cpus("0-3,6") == [0, 1, 2, 3, 6]
    with pytest.raises(ValueError, match="'x'"):
        servers.parse_cpus("0,x")
    with pytest.raises(ValueError, match="'3-1'"):
        servers.parse_cpus("3-1")


def test_proc_parsing_and_process_trees(tmp_path):
    # A command name with spaces and parentheses must not shift the fields.
    assert procs.parse_ppid("42 (python3 (worker) x) S 7 42 42 0 -1") == 7
    assert procs.parse_rss_kib("Name:\tjava\nVmRSS:\t  20480 kB\nThreads: 3\n") == 20480
    assert procs.parse_rss_kib("Name:\tzombie\nState:\tZ\n") == 0
    fake = tmp_path / "proc"
    tree = {10: (1, 1000), 11: (10, 2000), 12: (11, 3000), 20: (1, 99999)}
    for pid, (ppid, rss) in tree.items():
        (fake / str(pid)).mkdir(parents=True)
        (fake / str(pid) / "stat").write_text(f"{pid} (srv {pid}) S {ppid} 0 0")
        (fake / str(pid) / "status").write_text(f"Name:\tx\nVmRSS:\t{rss} kB\n")
    (fake / "self").mkdir()
    assert sorted(procs.tree(10, fake)) == [10, 11, 12]
    assert procs.tree_rss_bytes(10, fake) == 6000 * 1024
    # PSS: 10 has smaps_rollup, 11 only smaps (summed per mapping), 12 neither: its RSS, and said so.
    (fake / "10" / "smaps_rollup").write_text(
        "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss: 1000 kB\nPss: 400 kB\nPss_Anon: 300 kB\n")
    (fake / "11" / "smaps").write_text(
        "7f00-7f10 r-xp 0 08:01 1 /usr/lib/libc.so\nRss: 1500 kB\nPss: 500 kB\nPss_File: 500 kB\n"
        "7f20-7f30 rw-p 0 00:00 0\nRss: 500 kB\nPss: 250 kB\n")
    mem = procs.tree_memory(10, fake)
    assert (mem.bytes, mem.rss_bytes, mem.processes, mem.rss_only) == ((400 + 750 + 3000) * 1024, 6000 * 1024, 3, 1)
    assert mem.measure == "pss, rss for 1 of 3 processes"
    assert procs.tree_memory(11, fake).measure == "pss, rss for 1 of 2 processes"
    assert procs.tree_memory(12, fake).measure == "rss"
    assert procs.tree_memory(10, fake).bytes < procs.tree_memory(10, fake).rss_bytes
    assert procs.parse_pss_kib("Rss: 10 kB\nPss_Anon: 3 kB\n") is None
    # CPU: utime, stime, cutime, cstime (fields 14-17), after a name that holds ") (".
    stat = "7 (a) (b c) S 1 7 7 0 -1 4194560 100 0 0 0 {} {} {} {} 20 0 1 0 5 1000 50"
    assert procs.parse_cpu_ticks(stat.format(300, 40, 5, 1)) == 346
    for pid, ticks in ((10, 100), (11, 250), (12, 50)):
        (fake / str(pid) / "stat").write_text(stat.replace("7 (a)", f"{pid} (a)").replace("S 1 7", f"S {tree[pid][0]} 7")
                                              .format(ticks, 0, 0, 0))
    assert procs.tree_cpu_seconds(10, fake) == pytest.approx(400 / os.sysconf("SC_CLK_TCK"))


def test_cpu_of_a_real_process_tree_grows_with_its_work():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\nimport sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        time.sleep(1.5)
        spent = procs.tree_cpu_seconds(os.getpid())
        assert spent >= procs.tree_cpu_seconds(child.pid) >= 0.5
    finally:
        child.communicate(b"", timeout=30)


def test_memory_of_this_process_tree_is_sampled():
    import os

    with procs.MemorySampler(os.getpid(), interval=0.05) as sampler:
        pass
    assert sampler.samples and all(s.bytes > 10 * 1024 * 1024 for s in sampler.samples)
    record = sampler.record()
    assert record["memory_measure"] == "pss"
    assert len(record["memory_bytes"]) == len(record["rss_bytes"]) == len(sampler.samples)
    assert all(p <= r for p, r in zip(record["memory_bytes"], record["rss_bytes"], strict=True))


# A parent that fills 64 MiB, then forks: the child shares those pages copy-on-write, never writing them.
_FORKER = """
import os, sys, time
data = bytearray(os.urandom(1 << 20)) * 64
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print("forked", flush=True)
sys.stdin.read()
"""


def test_pss_counts_the_pages_a_forked_worker_shares_with_its_parent_once(tmp_path):
    """Real /proc: the RSS sum counts the 64 MiB twice (parent and child), the PSS sum once."""
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            assert proc.stdout.readline().strip() == "forked"
            mem = procs.tree_memory(proc.pid)
        finally:
            procs.stop_tree(proc.pid, grace=5)
    assert mem.processes == 2 and mem.measure == "pss"
    mib = 1024 * 1024
    # Both hold the 64 MiB resident; PSS charges each half of it.
    assert mem.rss_bytes > 2 * 64 * mib
    assert mem.bytes < mem.rss_bytes - 48 * mib, (mem.bytes // mib, mem.rss_bytes // mib)


def test_peers_get_slipways_own_pins_and_pinned_versions():
    pins = envs.shared_pins()
    assert [p.split("==")[0] for p in pins] == ["torch", "numpy", "pillow"]
    for peer in spec.PEERS.values():
        reqs = envs.requirements(peer)
        assert all("==" in r for r in reqs), reqs
        assert any(r.startswith(f"{peer.name}=={peer.version}") for r in reqs)


def test_configurations_by_cpu_count():
    keys = [c.key for c in spec.configs(2)]
    assert keys[:3] == ["slipway-pytorch-cpu", "slipway-pytorch-cpp-cpu", "slipway-onnx-cpu"]
    assert {"torchserve-default", "torchserve-1x", "torchserve-batch", "litserve-default", "bentoml-per-cpu"} <= set(keys)
    by_key = {c.key: c for c in spec.configs(4)}
    assert by_key["torchserve-1x"].threads == 4 and by_key["bentoml-per-cpu"].workers == 4
    assert by_key["torchserve-batch"].batch_max == 8 and by_key["litserve-per-cpu"].optional
    assert [c.server for c in spec.configs(2, variants=(), peers=("litserve",))] == ["litserve", "litserve"]


def test_settings_are_checked_and_the_runtime_estimated():
    s = PeerSettings()
    s.validate()
    # The full run: 8 configurations, 3 rounds; about a quarter of an hour.
    assert 12 * 60 <= s.estimate_s(8) <= 16 * 60
    with pytest.raises(ConfigError, match="--peer nginx"):
        PeerSettings(peers=("nginx",)).validate()
    with pytest.raises(ConfigError, match="seconds"):
        PeerSettings(seconds=0).validate()


def test_cli_rejects_a_malformed_image_option(repo_root, tmp_path, capsys):
    code = main(["bench", "--peers", "--image", "pytorch-cpu", "--config", str(repo_root / "release.toml"),
                 "--out", str(tmp_path)])
    assert code == 2
    assert "--image 'pytorch-cpu': expected VARIANT=IMAGE" in capsys.readouterr().err


def _plan(config_path: Path):
    from slipway.config import load_config
    from slipway.plan import Trigger, make_plan

    config = load_config(config_path)
    return config, make_plan(config, Trigger(event="local", sha="0" * 40), config_path=str(config_path))


def test_the_model_and_images_come_from_the_projects_plan(repo_root):
    """Run in examples/street, the peers serve the street model and the rows are the street images."""
    from slipway.benchmark.peers.run import scope

    config, plan = _plan(repo_root / "examples" / "street" / "release.toml")
    model, entries = scope(plan, config, ())
    assert model == "street"
    assert [e.variant for e in entries] == ["pytorch-cpu", "pytorch-cpp-cpu", "onnx-cpu"]
    assert {e.image for e in entries} == {f"127.0.0.1:5000/street/street-{v}" for v in
                                          ("pytorch-cpu", "pytorch-cpp-cpu", "onnx-cpu")}
    assert [e.variant for e in scope(plan, config, ("onnx-cpu",))[1]] == ["onnx-cpu"]
    with pytest.raises(ConfigError, match="--variant tensorflow-cpu: not a variant of the plan"):
        scope(plan, config, ("tensorflow-cpu",))

    # The repository's own project: its PyTorch model's CPU images, not the TensorFlow ones.
    config, plan = _plan(repo_root / "release.toml")
    model, entries = scope(plan, config, ())
    assert model == "shapes-torch" and {e.runtime for e in entries} <= set(spec.PEER_RUNTIMES) and entries
    tf = [e.variant for e in plan.matrix.images if e.model != "shapes-torch"]
    if tf:
        with pytest.raises(ConfigError, match="compares one model"):
            scope(plan, config, (entries[0].variant, tf[0]))


def test_the_report_names_the_project_and_how_to_run_it_again(repo_root, recorded):
    from slipway.benchmark.peers.run import rerun_command

    assert rerun_command(repo_root) == "make bench-peers"
    assert rerun_command(repo_root / "examples" / "street") == "make bench-peers PEERS_PROJECT=examples/street"
    md = report.markdown({**recorded, "project": "street", "command": "make bench-peers PEERS_PROJECT=examples/street"})
    assert md.startswith("# Slipway against TorchServe, LitServe and BentoML: street\n")
    assert "Written by `make bench-peers PEERS_PROJECT=examples/street`" in md
    # A run recorded before the project was: the plain command, and its memory figure was the RSS sum.
    old = report.markdown(recorded)
    assert "Written by `make bench-peers`" in old
    # Its figures are RSS sums: the header and the text say so, and nothing claims PSS.
    assert "| memory under load (RSS sum) | detections |" in old and "from before PSS was measured" in old
    assert "peak PSS" not in old
    # A run that measured PSS says so, and marks a figure that fell back to RSS for some process.
    configs = [{**c, "summary": {**c["summary"], "memory_measure": "pss", "rss_mib": 999}} for c in recorded["configs"]]
    configs[0]["summary"]["memory_measure"] = "pss, rss for 1 of 3 processes"
    new = report.markdown({**recorded, "configs": configs})
    assert "| memory under load (PSS) | RSS sum |" in new and "peak PSS" in new
    assert f"| {configs[0]['summary']['memory_mib']} MiB (pss, rss for 1 of 3 processes) | 999 MiB |" in new
    assert new.count(" | 999 MiB | ") == len(configs)


def test_an_image_of_other_weights_is_told_apart_from_the_peers_export():
    """An image built before the weights changed cannot answer as the peers do: the run says why."""
    ours = {"source": {"weights_sha256": "28d4e83b0f75" + "0" * 52}, "files": {"onnx": {"sha256": "a" * 64}}}
    same = {"source": {"weights_sha256": "28d4e83b0f75" + "0" * 52}, "files": {"onnx": {"sha256": "b" * 64}}}
    other = {"source": {"weights_sha256": "41020610a286" + "0" * 52}}
    # Two exports of the same weights differ in bytes, not in answers.
    assert servers.export_mismatch(ours, same) == ""
    assert servers.export_mismatch(ours, other) == "exported from weights sha256 41020610a286, the peers' export " \
        "from 28d4e83b0f75"
    assert servers.export_mismatch(ours, {}) == ""


def test_slipways_rows_say_how_the_service_ran():
    """The settings column of a Slipway image: what its service reports, else its knobs."""
    row = {"key": "slipway-onnx-cpu", "server": "slipway", "label": "Slipway onnx-cpu image",
           "settings": "the image's defaults", "summary": None, "check": None,
           "actual": {"image": "r/onnx:1", "THREADS": "2",
                      "parallelism": {"workers": 2, "slots": 2, "threads_per_slot": 1, "batch_max": 1}}}
    md = report.markdown({"settings": {"concurrency": [1, 8]}, "machine": {}, "goals": [], "configs": [row]})
    assert "| Slipway onnx-cpu image | 2 worker processes x 1 thread |" in md
    assert "(ran with THREADS=2; the service reports 2 worker processes x 1 thread)" in md
    older = {**row, "actual": {"THREADS": "2", "parallelism": {"slots": 1, "threads_per_slot": 2, "batch_max": 1}}}
    assert report._settings_cell(older) == "1 slot x 2 threads"
    assert report._settings_cell({**row, "actual": {"SLIPWAY_WORKERS": "2", "SLIPWAY_THREADS": "1"}}) == \
        "workers 2, threads 1"


def test_a_busy_machine_is_judged_by_the_cpus_in_use_before_the_run():
    from slipway.benchmark.peers.report import busy_note

    # A load average left by a benchmark that just ended, on a machine that is quiet now: no warning.
    quiet = {"machine": {"usable_cpus": 2, "load_average_before": [3.1, 2.7, 2.3], "cpus_in_use_before": 0.1}}
    assert busy_note(quiet) == ""
    busy = {"machine": {"usable_cpus": 2, "load_average_before": [0.2, 0.2, 0.2], "cpus_in_use_before": 0.9}}
    assert "0.90 of 2 CPUs in use" in busy_note(busy)
    # A run recorded before the measurement: judged by its load average.
    assert "load average 3.1" in busy_note({"machine": {"usable_cpus": 2, "load_average_before": [3.1, 1, 1]}})


def test_cpus_in_use_sees_a_busy_process():
    import subprocess
    import sys

    from slipway.benchmark.machine import cpus_in_use

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert cpus_in_use(1.0) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()
