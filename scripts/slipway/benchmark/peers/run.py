"""Run the peer benchmark: every configuration, pinned to the same CPUs, in interleaved rounds.

For each round, each configuration (in an order rotated every round) is started fresh, checked
answering, and loaded at each concurrency (warm-up, then the timed window), with the memory of its
process tree (PSS, and the RSS sum beside it: ``procs``) sampled during the highest concurrency;
then stopped. In the first round every
server's detections on the golden images are compared with the export's reference detections
(the ones Slipway's smoke test holds every image to) and with the first Slipway image's answers. Results: ``peers.json``, ``peers.md`` and
``peers.svg`` in the report folder.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slipway import engine, services
from slipway.benchmark import machine, procs
from slipway.benchmark.peers import envs, load, report, results, servers
from slipway.benchmark.peers.spec import PEER_RUNTIMES, PEERS, SLIPWAY_VARIANTS, configs
from slipway.errors import CheckError, ConfigError, SlipwayError

SCHEMA = 1


@dataclass
class PeerSettings:
    seconds: float = 10.0
    warmup: float = 2.0
    rounds: int = 3
    concurrency: tuple[int, ...] = (1, 8)
    cpus: str = ""                       # empty: the first two CPUs this process may use
    peers: tuple[str, ...] = tuple(PEERS)
    # Slipway's images by variant; empty: from_context takes the project's CPU images (PEER_RUNTIMES).
    variants: tuple[str, ...] = SLIPWAY_VARIANTS
    only: tuple[str, ...] = ()           # configuration keys to keep (empty: all)

    def validate(self) -> None:
        if self.seconds <= 0 or self.warmup < 0 or self.rounds < 1:
            raise ConfigError(f"peer bench: seconds={self.seconds}, warmup={self.warmup}, rounds={self.rounds}: "
                              "seconds and rounds must be positive, warm-up not negative")
        unknown = sorted(set(self.peers) - set(PEERS))
        if unknown:
            raise ConfigError(f"--peer {', '.join(unknown)}: not one of {', '.join(PEERS)}")
        if any(c < 1 for c in self.concurrency):
            raise ConfigError(f"peer bench concurrency {self.concurrency}: every level must be at least 1")

    def estimate_s(self, n_configs: int, start_s: float = 15.0) -> float:
        """Rough wall time: each start plus every level's warm-up and timed window, every round."""
        return self.rounds * n_configs * (start_s + len(self.concurrency) * (self.warmup + self.seconds))


def default_cpus() -> str:
    usable = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in usable[:2])


def check_against_reference(got: list[list[dict]], reference: list[dict[str, Any]],
                            tolerance: dict[str, float]) -> dict[str, Any]:
    from model_export.compare import compare_detections

    iou, score = float(tolerance.get("iou", 0.99)), float(tolerance.get("score", 1e-4))
    compared = [compare_detections(ref["detections"], dets, iou=iou, score=score)
                for ref, dets in zip(reference, got, strict=True)]
    return {"ok": all(c.ok for c in compared), "images": len(compared),
            "min_iou": min(c.min_iou for c in compared), "max_score_diff": max(c.max_score_diff for c in compared),
            "tolerance": {"iou": iou, "score": score}}


def _java_version() -> str | None:
    if not shutil.which("java"):
        return None
    res = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return (res.stderr or res.stdout).splitlines()[0].strip() if (res.stderr or res.stdout) else None


@dataclass
class Inputs:
    model_dir: Path
    images: dict[str, str]               # Slipway variant -> image reference in the engine
    report_dir: Path
    work: Path
    tolerance: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print
    project: str = ""                    # the release.toml's project name
    command: str = report.COMMAND        # how to run this benchmark again, for the report


def run(inputs: Inputs, settings: PeerSettings) -> dict[str, Any]:
    settings.validate()
    log = inputs.log
    cpus = settings.cpus or default_cpus()
    cpu_list = servers.parse_cpus(cpus)
    all_configs = configs(len(cpu_list), variants=settings.variants, peers=settings.peers)
    if settings.only:
        unknown = sorted(set(settings.only) - {c.key for c in all_configs})
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: no such configuration "
                              f"(one of {', '.join(c.key for c in all_configs)})")
        all_configs = [c for c in all_configs if c.key in settings.only]
    else:
        all_configs = [c for c in all_configs if not c.optional]
    manifest_text = (inputs.model_dir / "model.json").read_text()
    import json

    manifest = json.loads(manifest_text)
    reference = json.loads((inputs.model_dir / "golden" / "reference.json").read_text())["images"]
    bodies = [(inputs.model_dir / "golden" / e["file"]).read_bytes() for e in reference]
    log(f"peer bench: {len(all_configs)} configurations x {settings.rounds} rounds on CPUs {cpus}; "
        f"about {settings.estimate_s(len(all_configs)) / 60:.0f} minutes")
    venvs = {name: envs.ensure(PEERS[name], log) for name in sorted({c.server for c in all_configs} - {"slipway"})}
    if any(c.server == "slipway" for c in all_configs):
        services.ensure_docker(log)
    run_info = machine.new_run()
    # The load generator runs on CPUs the servers do not use, where the machine has them.
    usable = sorted(os.sched_getaffinity(0))
    client_cpus = [c for c in usable if c not in cpu_list]
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    inputs.work.mkdir(parents=True, exist_ok=True)
    setup = servers.Setup(model_dir=inputs.model_dir, model=manifest["name"], cpus=cpus, work=inputs.work,
                          venvs=venvs, images=inputs.images, probe=bodies[0], log=log)
    load_before = machine.load_average()
    busy_before = machine.cpus_in_use()
    started = time.monotonic()
    records: dict[str, dict[str, Any]] = {
        c.key: {"key": c.key, "server": c.server, "label": c.label, "settings": c.settings,
                "variant": c.variant or None, "rounds": [], "check": None} for c in all_configs}
    by_key = {c.key: c for c in all_configs}
    answers: dict[str, Any] = {}  # the first Slipway image's detections, for the others to equal
    try:
        for r in range(settings.rounds):
            for key in results.round_order(list(by_key), r):
                config = by_key[key]
                rec = records[key]
                try:
                    rec["rounds"].append(_measure(config, setup, settings, bodies, reference, inputs, rec, r,
                                                   answers))
                except SlipwayError as exc:
                    rec.setdefault("failures", []).append(f"round {r + 1}: {str(exc).splitlines()[0]}")
                    log(f"{key}: round {r + 1} failed: {exc}")
    finally:
        if client_cpus:
            os.sched_setaffinity(0, usable)
    for rec in records.values():
        rec["summary"] = results.summarize_config(rec["rounds"]) if rec["rounds"] else None
    out_configs = list(records.values())
    data: dict[str, Any] = {
        "schema": SCHEMA,
        **run_info,
        "model": manifest["name"],
        "project": inputs.project or None,
        "command": inputs.command,
        "machine": {**machine.machine_info(), "java": _java_version(), "load_average_before": load_before,
                    "cpus_in_use_before": busy_before,
                    "load_average_after": machine.load_average()},
        "settings": {"seconds": settings.seconds, "warmup_s": settings.warmup, "rounds": settings.rounds,
                     "concurrency": list(settings.concurrency), "server_cpus": cpus,
                     "client_cpus": ",".join(map(str, client_cpus)) or "shared with the servers",
                     "images": inputs.images, "peers": {n: PEERS[n].version for n in settings.peers}},
        "configs": out_configs,
        "goals": results.goals(out_configs, list(settings.concurrency)),
        "seconds_total": round(time.monotonic() - started, 1),
    }
    inputs.report_dir.mkdir(parents=True, exist_ok=True)
    (inputs.report_dir / "peers.json").write_text(json.dumps(data, indent=2) + "\n")
    (inputs.report_dir / "peers.md").write_text(report.markdown(data))
    (inputs.report_dir / "peers.svg").write_text(report.svg(data))
    log(f"peer bench: {inputs.report_dir / 'peers.md'} ({data['seconds_total'] / 60:.1f} min)")
    return data


def _measure(config, setup: servers.Setup, settings: PeerSettings, bodies: list[bytes],
             reference: list[dict[str, Any]], inputs: Inputs, rec: dict[str, Any], r: int,
             answers: dict[str, Any]) -> dict[str, Any]:
    log = inputs.log
    with servers.serve(config, setup) as running:
        rec["actual"] = running.actual
        if rec["check"] is None:
            try:
                got = load.detections(running.url, bodies)
                rec["check"] = check_against_reference(got, reference, inputs.tolerance)
                # And against what the first Slipway image answered, where one was measured before.
                if config.server == "slipway" and "slipway" not in answers:
                    answers["slipway"] = (config.key, got)
                elif "slipway" in answers:
                    key, theirs = answers["slipway"]
                    vs = check_against_reference(got, [{"detections": d} for d in theirs], inputs.tolerance)
                    rec["check"]["vs_slipway"] = {"image": key, **vs}
                    rec["check"]["ok"] = rec["check"]["ok"] and vs["ok"]
            except Exception as exc:  # a wrong answer is a result to report, not a crash
                rec["check"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if not rec["check"].get("ok"):
                raise CheckError(f"{config.key}: detections differ from the reference: {rec['check']}")
        levels = []
        memory: dict[str, Any] = {}
        top = max(settings.concurrency)
        for conc in settings.concurrency:
            if conc == top:
                with procs.MemorySampler(running.root_pid) as sampler:
                    lv = load.level(running.url, bodies, concurrency=conc, seconds=settings.seconds,
                                    warmup=settings.warmup)
                memory = sampler.record()
            else:
                lv = load.level(running.url, bodies, concurrency=conc, seconds=settings.seconds,
                                warmup=settings.warmup)
            levels.append(lv)
            log(f"round {r + 1} {config.key}: c={conc} {lv['requests_per_s']:.0f} req/s, "
                f"p50 {lv['latency_ms'].get('p50', 0):.1f} ms, errors {sum(lv['errors'].values())}")
        figure, rss = memory.get("memory_bytes") or [0], memory.get("rss_bytes") or [0]
        log(f"round {r + 1} {config.key}: memory under load {max(figure) / results.MIB:.0f} MiB "
            f"({memory.get('memory_measure', 'pss')}; median sample {statistics.median(figure) / results.MIB:.0f} MiB, "
            f"RSS sum {max(rss) / results.MIB:.0f} MiB)")
        return {"round": r + 1, "ready_s": round(running.ready_s, 2), "levels": levels, **memory}


def _pulled(ref: str) -> bool:
    """Pull ``ref``; whether it is now in the engine (a registry that refuses or lacks it: False)."""
    try:
        engine.pull(ref, timeout=600)
    except SlipwayError:
        return False
    return True


def scope(plan, config, variants: tuple[str, ...]) -> tuple[str, list]:
    """The model the peers serve and the Slipway image entries of the plan to compare them with.

    ``variants`` named: those images (of one model). None named: the plan's CPU images whose runtime
    serves the exported PyTorch model (``PEER_RUNTIMES``), of the first model that has any. The
    model must export TorchScript: that file is what every peer serves.
    """
    images = list(plan.matrix.images)
    if variants:
        unknown = sorted(set(variants) - {e.variant for e in images})
        if unknown:
            raise ConfigError(f"--variant {', '.join(unknown)}: not a variant of the plan "
                              f"({', '.join(e.variant for e in images) or 'none'})")
        entries = [e for e in images if e.variant in variants]
    else:
        entries = [e for e in images if e.device == "cpu" and e.runtime in PEER_RUNTIMES]
        if not entries:
            raise ConfigError(f"the plan has no CPU image of a {', '.join(PEER_RUNTIMES)} runtime "
                              "([[variants]] in release.toml): name the images with --variant")
        first = entries[0].model
        entries = [e for e in entries if e.model == first]
    models = sorted({e.model for e in entries})
    if len(models) != 1:
        raise ConfigError(f"the peer bench compares one model; variants {', '.join(e.variant for e in entries)} "
                          f"serve {', '.join(models)}: choose variants of one model with --variant")
    model = models[0]
    try:
        spec = config.model(model)
    except KeyError:
        raise ConfigError(f"model {model!r} of the plan is not in the configuration") from None
    if "torchscript" not in config.exporters_for(spec):
        raise ConfigError(f"model {model!r}: the peers serve its TorchScript export, and its exporters are "
                          f"{', '.join(config.exporters_for(spec)) or 'none'} (add \"torchscript\" to exporters)")
    return model, entries


def rerun_command(root: Path) -> str:
    """``make bench-peers``, with ``PEERS_PROJECT`` when the project is not the checkout's own."""
    res = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                         check=False)
    top = Path(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip() else None
    if top is None or root.resolve() == top.resolve():
        return report.COMMAND
    try:
        folder = root.resolve().relative_to(top.resolve())
    except ValueError:
        return f"slipway bench --peers (in {root.name})"
    return f"{report.COMMAND} PEERS_PROJECT={folder.as_posix()}"


def from_context(ctx, settings: PeerSettings, report_dir: Path | None = None,
                 image_overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The peer benchmark of a project's release: its export of the PyTorch model and its CPU images.

    The model, its images, golden images, labels and pre/postprocessing all come from the project's
    plan and configuration (``scope``): run in ``examples/street`` it compares the street images on
    the street model. The export is made (or reused when current) by ``slipway export`` for that
    model. Images are those ``slipway images`` recorded (as ``slipway bench`` finds them), else the
    plan's image name at the release's version when the engine has it or the registry gives it;
    ``image_overrides`` (variant -> reference) win over both.
    """
    from slipway.stages import export
    from slipway.stages.bench import images_in_engine

    model, entries = scope(ctx.plan, ctx.config, settings.variants)
    settings.variants = tuple(e.variant for e in entries)
    ctx.log(f"peer bench: model {model}, Slipway images {', '.join(settings.variants)}")
    export.run(ctx, models=[model])
    model_dir = ctx.out / "models" / model
    if not (model_dir / "model.json").is_file():
        raise ConfigError(f"no export in {model_dir} (run 'slipway export --model {model}')")
    images: dict[str, str] = {}
    overrides = image_overrides or {}
    if settings.variants and set(settings.variants) - set(overrides):
        services.ensure_docker(ctx.log)
        records = images_in_engine(ctx, entries)
        for e in entries:
            rec = records.get(e.variant)
            if rec is not None and rec.tag and not rec.unavailable:
                images[e.variant] = rec.tag
                continue
            # Else the release's tag: in the engine already, or pulled from the registry it went to.
            ref = f"{e.image}:{ctx.plan.version}"
            if engine.image_exists(ref) or _pulled(ref):
                images[e.variant] = ref
    images.update(overrides)
    tolerance = ctx.config.smoke.tolerance_for("torchscript").model_dump()
    inputs = Inputs(model_dir=model_dir, images=images, report_dir=report_dir or ctx.out / "bench" / "peers",
                    work=ctx.out / "bench" / "peers-work", tolerance=tolerance, log=ctx.log,
                    project=ctx.plan.project, command=rerun_command(ctx.root))
    try:
        return run(inputs, settings)
    finally:
        shutil.rmtree(inputs.work, ignore_errors=True)
