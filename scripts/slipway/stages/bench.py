"""``slipway bench``: the numbers a release is judged by, and the budgets that gate it.

In one run, on one machine:

- in-process latency of every runtime on the same golden images with the same thread count,
  per stage, against the eager PyTorch baseline (``slipway.benchmark.inprocess``);
- served latency and throughput of every image at concurrency 1 and 8, and its start-up time
  (``slipway.benchmark.served``);
- sizes of images (gzip-compressed and uncompressed), wheels and model files
  (``slipway.benchmark.sizes``);
- import times of the C++ wheel, torch and TensorFlow.

Images come from ``images.json`` (a local build) or ``images/<variant>.json`` (a GitHub job):
a pushed digest is pulled and a dry run's saved tar loaded, as ``slipway smoke`` does.

Writes ``bench/results.json`` (with a run id and the machine's fingerprint), ``bench/table.md`` and
``bench/chart.png``, then checks ``[budgets]``; an exceeded budget raises CheckError, which stops
``slipway release`` before ``publish``.

Settings come from keyword arguments, else the ``SLIPWAY_BENCH_*`` variables of
``slipway.settings`` (``RUNS``, ``WARMUP``, ``THREADS``, ``SECONDS``, ``CONCURRENCY`` as ``1,8``,
``READY_RUNS``, ``IMPORT_REPEATS`` (0 leaves import times out), ``SERVED`` = 0 to leave out the
containers, ``GRID`` = 0 to leave out the serving grid, ``GRID_SECONDS``; see docs/settings.md),
else the defaults below.

The serving grid (``slipway.benchmark.grid``): each image once per point of slots x threads, worker
processes where the runtime has them, batching where it batches, and the service's own default, at concurrency 1 and the highest concurrency; the best point
by the rule stated there is recorded per image. ``slipway bench --tune``, run between ``images``
and ``smoke``, measures the grid on the built images and makes the best point each image's
defaults: a layer of ENV and LABEL on the built image (``FROM <image ID>``, nothing else), which
replaces it in ``images.json`` (``tuned_from`` names the built image), so smoke tests, bench
measures and publish ships the image with the defaults it will run with. The later bench then
reuses the grid measured by ``--tune`` instead of measuring it again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import inspect
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from slipway import engine, records, services, smoketest
from slipway.benchmark import budgets as budget_checks
from slipway.benchmark import grid, inprocess, machine, procs, report, served, sizes
from slipway.context import StageContext, StageResult
from slipway.engine_images import materialize
from slipway.errors import CheckError, ConfigError, SlipwayError
from slipway.outputs import image_records
from slipway.settings import get_settings
from slipway.smoketest import run_container

RESULTS_SCHEMA = 1


@dataclass
class BenchSettings:
    threads: int = 2
    warmup: int = 10
    runs: int = 60
    seconds: float = 5.0
    concurrency: tuple[int, ...] = (1, 8)
    ready_runs: int = 3
    import_repeats: int = 3
    served: bool = True
    # The serving grid (slipway.benchmark.grid): on unless SLIPWAY_BENCH_GRID=0; seconds per level.
    grid: bool = True
    grid_seconds: float = 3.0

    @classmethod
    def resolve(cls, **given: Any) -> BenchSettings:
        """Keyword arguments first, then the ``SLIPWAY_BENCH_*`` settings, then the defaults."""
        env = get_settings()
        s = cls()
        for name in ("threads", "warmup", "runs", "seconds", "ready_runs", "import_repeats", "grid_seconds"):
            value = given.get(name)
            if value is None:
                value = getattr(env, f"bench_{name}")
            if value is not None:
                if value < 0 or (value == 0 and name not in ("warmup", "import_repeats")):
                    raise ConfigError(f"bench setting {name} must be positive, got {value}")
                setattr(s, name, value)
        conc = given.get("concurrency")
        if conc:
            try:
                s.concurrency = tuple(int(c) for c in (conc.split(",") if isinstance(conc, str) else conc))
            except ValueError as exc:
                raise ConfigError(f"bench concurrency {conc!r}: expected numbers like 1,8") from exc
        elif env.bench_concurrency:
            s.concurrency = env.bench_concurrency
        served_flag = given.get("served")
        if served_flag is None:
            served_flag = env.bench_served
        if served_flag is not None:
            s.served = bool(served_flag)
        grid_flag = given.get("grid")
        if grid_flag is None:
            grid_flag = env.bench_grid
        if grid_flag is not None:
            s.grid = bool(grid_flag)
        return s


class EngineImage(records.ImageRecord):
    """An image record as this run has it in the engine; ``unavailable`` says why it could not be
    had (never written: the bench's own view of ``images.json`` and ``images/<variant>.json``)."""

    unavailable: str | None = None


def _scope(ctx: StageContext, variants: list[str] | None) -> tuple[list[records.ImageEntry], list[str]]:
    """The image entries and the models this run measures."""
    entries = list(ctx.plan.matrix.images)
    if variants:
        unknown = sorted(set(variants) - {e.variant for e in entries})
        if unknown:
            raise ConfigError(f"--variant {', '.join(unknown)}: not in the plan")
        entries = [e for e in entries if e.variant in variants]
        models = sorted({e.model for e in entries})
    else:
        models = [e.model for e in ctx.plan.matrix.export]
    return entries, models


def _eager_source(ctx: StageContext, model: str, manifest: records.ModelManifest) -> dict[str, Any]:
    """Entry point and weights of the eager model; the weights must be the ones that were exported."""
    try:
        spec = ctx.config.model(model)
    except KeyError:
        return {"reason": f"model {model} is not in the configuration"}
    weights = Path(spec.weights)
    if not weights.is_file():
        return {"reason": f"weights file {weights.name} not found"}
    want = manifest.source.weights_sha256 if manifest.source else None
    if want:
        h = hashlib.sha256()
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != want:
            return {"reason": f"{weights.name} changed since the export: it is not the exported model"}
    return {"entry_point": spec.entry_point, "weights": str(weights), "sys_path": [str(ctx.root)]}


def _tolerances(ctx: StageContext) -> dict[str, dict[str, float]]:
    return {name: tol.model_dump() for name, tol in ctx.config.smoke.tolerance.items()}


def measure_in_process(ctx: StageContext, models: list[str], settings: BenchSettings,
                       work: Path) -> tuple[records.JsonObject, inprocess.CppEnv]:
    if ctx.config.wheels.enabled:
        from slipway.stages.wheels import runtime_dir

        cpp = inprocess.prepare_cpp(runtime_dir(ctx), work, log=ctx.log)
    else:
        cpp = inprocess.CppEnv(reason="wheels.enabled = false in the configuration")
    ip_settings = inprocess.Settings(threads=settings.threads, warmup=settings.warmup, runs=settings.runs,
                                     tolerance=_tolerances(ctx))
    out: dict[str, Any] = {}
    for model in models:
        model_dir = ctx.out / "models" / model
        if not (model_dir / "model.json").is_file():
            reason = f"no export in models/{model} (run 'slipway export')"
            framework = ctx.config.model(model).framework
            out[model] = {rt: {"runtime": rt, "available": False, "reason": reason}
                          for rt in inprocess.RUNTIMES.get(framework, ())}
            ctx.log(f"{model}: no export to measure")
            continue
        manifest = records.read(model_dir / "model.json", records.ModelManifest)
        out[model] = inprocess.measure_model(model_dir, manifest, ip_settings, cpp=cpp, log=ctx.log,
                                             eager=_eager_source(ctx, model, manifest))
        if not ctx.config.wheels.enabled and "cpp" in out[model]:
            out[model]["cpp"]["skipped"] = True
    return {"threads": settings.threads, "warmup": settings.warmup, "runs": settings.runs,
            "batch": ip_settings.batch, "models": out}, cpp


def measure_imports(ctx: StageContext, models: list[str], settings: BenchSettings,
                    cpp: inprocess.CppEnv) -> records.JsonObject:
    frameworks = set()
    for model in models:
        try:
            frameworks.add(ctx.config.model(model).framework)
        except KeyError:
            continue
    out: dict[str, Any] = {}
    wanted = []
    if "pytorch" in frameworks:
        wanted.append(("torch", None))
        if cpp.available:
            wanted.append(("slipway_runtime", cpp.env()))
        else:
            out["slipway_runtime"] = {"module": "slipway_runtime", "available": False, "reason": cpp.reason}
    if "tensorflow" in frameworks or importlib.util.find_spec("tensorflow") is not None:
        wanted.append(("tensorflow", None))
    if settings.import_repeats == 0:
        return {}
    for module, env in wanted:
        if env is None and importlib.util.find_spec(module) is None:
            out[module] = {"module": module, "available": False, "reason": f"{module} is not installed"}
            continue
        ctx.log(f"import time of {module}: {settings.import_repeats} fresh interpreter(s)")
        out[module] = inprocess.import_time(module, env=env, repeats=settings.import_repeats,
                                            threads=settings.threads)
    return out


def images_in_engine(ctx: StageContext, entries: list[records.ImageEntry]) -> dict[str, EngineImage]:
    """variant -> image record, each image of this run present in the engine, as smoke gets it.

    A local build is in ``images.json`` and in the engine already (its ID). A job on GitHub has
    only the downloaded ``images/<variant>.json``, which names the pushed digest (a real
    release) or the saved tar (a dry run): ``slipway smoke``'s ``materialize`` pulls or loads
    it, so bench measures the image that was smoke-tested. An image that cannot be had is
    marked ``unavailable`` (its budgets then fail as not measured).
    """
    found = {variant: EngineImage.model_validate(records.dump(record))
             for variant, record in image_records(ctx.out).items()}
    wanted = [e.variant for e in entries
              if e.variant in found and (found[e.variant].digest or found[e.variant].archive)]
    if not wanted:
        return found
    try:
        services.ensure_docker(ctx.log)
    except SlipwayError:
        return found  # measure_served and measure_sizes report the missing engine
    for variant in wanted:
        try:
            found[variant] = materialize(ctx, found[variant])
        except SlipwayError as exc:
            found[variant] = found[variant].model_copy(update={"unavailable": str(exc).splitlines()[0]})
            ctx.log(f"{variant}: {found[variant].unavailable}")
    return found


def _has_gpu() -> bool:
    return engine.has_gpu()


@contextlib.contextmanager
def _external_server(image: EngineImage, model_dir: Path, ctx: StageContext, variant: str):
    """The model server a ``tfserving`` image talks to (as the smoke test starts it); else nothing."""
    if image.runtime != "tfserving":
        yield {}, None
        return
    server = getattr(smoketest, "tfserving_server", None)
    if server is None:
        raise CheckError("this slipway cannot start the external TF Serving server the image needs")
    mode = smoketest.tfserving_mode() if hasattr(smoketest, "tfserving_mode") else "stub"
    with server(model_dir, mode=mode, timeout=ctx.config.smoke.timeout_s, memory=ctx.config.smoke.memory,
                cpus=ctx.config.smoke.cpus, logs_to=ctx.out / "bench" / f"tfserving-{variant}.log") as ext:
        yield {"TFSERVING_URL": ext.url}, ext.description


def _start(image: EngineImage, ctx: StageContext, variant: str, env: dict[str, str]):
    options: dict[str, Any] = {}
    if image.device == "gpu" and "gpus" in inspect.signature(run_container).parameters:
        options["gpus"] = True
    return run_container(image.tag, memory=ctx.config.smoke.memory, cpus=ctx.config.smoke.cpus,
                         timeout=ctx.config.smoke.timeout_s, env=env,
                         logs_to=ctx.out / "bench" / f"container-{variant}.log", **options)


def measure_served(ctx: StageContext, entries: list[records.ImageEntry], images: dict[str, EngineImage],
                   settings: BenchSettings) -> records.JsonObject:
    """Per image: ``ready_runs`` starts to /readyz; during the first, a load test per concurrency."""
    out: dict[str, Any] = {}
    if not entries:
        return out
    if not settings.served:
        return {e.variant: {"skipped": True, "reason": "served benchmark turned off (SLIPWAY_BENCH_SERVED=0)"}
                for e in entries}
    try:
        services.ensure_docker(ctx.log)
    except SlipwayError as exc:
        return {e.variant: {"reason": f"no Docker engine: {str(exc).splitlines()[0]}"} for e in entries}
    for entry in entries:
        variant = entry.variant
        if variant not in images:
            out[variant] = {"reason": "no image built for this variant (run 'slipway images')"}
            continue
        image = images[variant]
        if image.device == "gpu" and not _has_gpu():
            out[variant] = {"skipped": True, "reason": "GPU image; this machine has no GPU"}
            continue
        if image.unavailable:
            out[variant] = {"reason": image.unavailable}
            continue
        model_dir = ctx.out / "models" / image.model
        golden = sorted((model_dir / "golden").glob("*.png"))
        if not golden:
            out[variant] = {"reason": f"no golden images in models/{image.model}/golden"}
            continue
        bodies = [p.read_bytes() for p in golden]
        model_name = records.read(model_dir / "model.json", records.ModelManifest).name
        result: dict[str, Any] = {"image": image.tag, "image_id": image.id, "runtime": image.runtime,
                                  "device": image.device, "cpus": ctx.config.smoke.cpus,
                                  "memory": ctx.config.smoke.memory, "load": [], "ready_s": {"runs": []}}
        try:
            with _external_server(image, model_dir, ctx, variant) as (extra_env, external):
                if external:
                    result["external_server"] = external
                # The image as it ships: its own SLIPWAY_SLOTS x SLIPWAY_THREADS (the service's
                # choice from the container's CPUs, or what `slipway bench --tune` measured).
                env = dict(extra_env)
                for i in range(settings.ready_runs):
                    with _start(image, ctx, variant, env) as running:
                        result["ready_s"]["runs"].append(round(running.ready_seconds, 3))
                        ctx.log(f"{variant}: start {i + 1}/{settings.ready_runs}: ready in "
                                f"{running.ready_seconds:.2f}s")
                        if i > 0:
                            continue
                        pid = _container_pid(running.name)
                        for conc in settings.concurrency:
                            before = _stage_metrics(running.url)
                            load = _measured_load(pid, functools.partial(
                                served.load_test, running.url, model_name, bodies, concurrency=conc,
                                seconds=settings.seconds))
                            after = _stage_metrics(running.url)
                            if before is not None and after:
                                load["stage_metrics_ms"] = grid.stage_delta(before, after)
                            result["load"].append(load)
                            lat = load["latency_ms"]
                            ctx.log(f"{variant}: concurrency {conc}: {load['requests_per_s']:.1f} req/s, "
                                    f"p50 {lat.get('p50', 0):.1f} ms, p95 {lat.get('p95', 0):.1f} ms, "
                                    f"errors {sum(load['errors'].values())}"
                                    + (f", {load['cpu_ms_per_request']:.2f} ms CPU a request"
                                       if "cpu_ms_per_request" in load else "")
                                    + (f", {load['memory_mib']:.0f} MiB ({load['memory_measure']})"
                                       if "memory_mib" in load else ""))
        except SlipwayError as exc:
            result["reason"] = str(exc).splitlines()[0]
            ctx.log(f"{variant}: {result['reason']}")
        runs = result["ready_s"]["runs"]
        if runs and "reason" not in result:
            result["ready_s"]["median"] = round(statistics.median(runs), 3)
        else:
            result.pop("ready_s")
        out[variant] = result
    return out


def _container_pid(name: str) -> int | None:
    """The host pid of the container's first process, where this machine's /proc shows it."""
    try:
        pid = int(engine.container_inspect(name)["State"]["Pid"])
    except (SlipwayError, KeyError, TypeError, ValueError):
        return None
    return pid if pid > 0 and Path(f"/proc/{pid}").exists() else None


def _measured_load(pid: int | None, run_load) -> dict[str, Any]:
    """``run_load()``'s result, with the container's CPU per request (every process in it, warm-up
    requests counted) and its peak memory (PSS of its processes, sampled twice a second) when the
    container's processes can be read from here."""
    if pid is None:
        return run_load()
    cpu_before = procs.tree_cpu_seconds(pid)
    with procs.MemorySampler(pid) as sampler:
        load = run_load()
    cpu = procs.tree_cpu_seconds(pid) - cpu_before
    sent = load.get("requests", 0) + load.get("warmup_requests", 0)
    if sent and cpu > 0:
        load["cpu_ms_per_request"] = round(cpu * 1000 / sent, 3)
    peak = max((s.bytes for s in sampler.samples), default=0)
    if peak:
        load["memory_mib"] = round(peak / 2**20, 1)
        load["memory_measure"] = sampler.record()["memory_measure"]
    return load


def _stage_metrics(url: str) -> dict[str, dict[str, float]] | None:
    """The service's ``slipway_stage_seconds`` histograms, or None where it has none."""
    try:
        r = httpx.get(f"{url}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    return grid.parse_stage_metrics(r.text) if r.status_code == 200 else None


def _parallelism(url: str, model_name: str) -> dict[str, Any] | None:
    """What the service says it runs with (``parallelism`` of /v1/models/<name>), or None where it does not say."""
    try:
        r = httpx.get(f"{url}/v1/models/{model_name}", timeout=10)
        body = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    found = body.get("parallelism") if isinstance(body, dict) else None
    return found if isinstance(found, dict) else None


def _grid_skip(image: EngineImage | None) -> str | None:
    if image is None:
        return "no image built for this variant (run 'slipway images')"
    if image.unavailable:
        return image.unavailable
    if image.device == "gpu" and not _has_gpu():
        return "GPU image; this machine has no GPU"
    if image.runtime == "tfserving":
        return "inference runs in the external model server; the image's slots do not decide it"
    return None


def measure_grid(ctx: StageContext, entries: list[records.ImageEntry], images: dict[str, EngineImage],
                 settings: BenchSettings) -> records.BenchGrid:
    """Per image: every grid point served and loaded at concurrency 1 and the target; the best point."""
    target = max(settings.concurrency)
    cpus = max(1, int(ctx.config.smoke.cpus))
    measured: dict[str, records.JsonObject] = {}
    for entry in entries:
        variant = entry.variant
        image = images.get(variant)
        reason = _grid_skip(image)
        if reason or image is None:
            measured[variant] = {"reason": reason}
            continue
        model_dir = ctx.out / "models" / image.model
        golden = sorted((model_dir / "golden").glob("*.png"))
        if not golden:
            measured[variant] = {"reason": f"no golden images in models/{image.model}/golden"}
            continue
        bodies = [p.read_bytes() for p in golden]
        model_name = records.read(model_dir / "model.json", records.ModelManifest).name
        points = []
        for point in grid.points(cpus, image.runtime, image.device):
            rec: dict[str, Any] = {"point": point, "load": []}
            try:
                with _start(image, ctx, variant, grid.env(point)) as running:
                    reported = _parallelism(running.url, model_name)
                    if reported is not None:
                        rec["reported"] = reported
                        differs = grid.reported_differs(point, reported)
                        if differs:
                            ctx.log(f"{variant}: grid {grid.label(point)}: the service runs {differs}")
                    for conc in sorted({1, target}):
                        rec["load"].append(served.load_test(running.url, model_name, bodies, concurrency=conc,
                                                            seconds=settings.grid_seconds))
            except SlipwayError as exc:
                rec["reason"] = str(exc).splitlines()[0]
            points.append(rec)
            rates = ", ".join(f"c={lv['concurrency']} {lv['requests_per_s']:.0f} req/s" for lv in rec["load"])
            ctx.log(f"{variant}: grid {grid.label(point)}: {rates or rec.get('reason')}")
        chosen = grid.choose(points, target)
        ctx.log(f"{variant}: grid choice: {chosen['why']}")
        measured[variant] = {"image": image.tag, "image_id": image.id, "runtime": image.runtime,
                             "points": points, "chosen": chosen}
    return records.BenchGrid(target=target, seconds=settings.grid_seconds, cpus=cpus, rule=grid.RULE,
                             images=measured)


def _grid_for(ctx: StageContext, entries: list[records.ImageEntry], images: dict[str, EngineImage],
              settings: BenchSettings) -> records.BenchGrid:
    """The grid ``--tune`` measured for these very images (by ID), else measured now."""
    recorded = ctx.read("bench/grid.json", records.BenchGrid, None)
    if recorded is not None:
        ids = {v: images[v].id if v in images else None for v in recorded.images}
        tuned = {v: g.get("tuned_image") for v, g in recorded.images.items()}
        if recorded.images and all(
                t.get("id") == ids.get(v) for v, t in tuned.items() if isinstance(t, dict)
        ) and all(e.variant in recorded.images for e in entries):
            return recorded.model_copy(update={"measured_by": "slipway bench --tune, on the built images"})
    return measure_grid(ctx, entries, images, settings)


def tune(ctx: StageContext, variants: list[str] | None = None, **options: Any) -> StageResult:
    """``slipway bench --tune``: measure the grid on the built images and give each its best point as defaults.

    Runs on a local build (``images.json``), between ``images`` and ``smoke``. Each tuned image is
    ``FROM <built image ID>`` plus ENV (the knobs) and LABEL (the same, and the ID it was made
    from): no file of the image changes. It takes the built image's tag and replaces it in
    ``images.json``, so everything after (smoke, bench, publish) uses the image with its defaults.
    """
    settings = BenchSettings.resolve(**options)
    entries, _ = _scope(ctx, variants)
    services.ensure_docker(ctx.log)
    path = ctx.out / "images.json"
    if not path.is_file():
        raise ConfigError(f"no {path}: --tune works on a local build; run 'slipway images' first")
    built = ctx.read("images.json", records.ImagesIndex).root
    wanted = {e.variant for e in entries}
    images = {v: EngineImage.model_validate(records.dump(r)) for v, r in built.items() if v in wanted}
    result = measure_grid(ctx, entries, images, settings)
    for variant, g in result.images.items():
        chosen = g.get("chosen")
        point = chosen.get("point") if isinstance(chosen, dict) else None
        if not isinstance(point, dict):
            continue
        record = built[variant]
        base_id = record.tuned_from or record.id
        if base_id is None or record.tag is None:
            continue
        new_id = grid.derive_image(base_id, record.tag, point, cpus=result.cpus, log=ctx.log)
        g["tuned_image"] = {"id": new_id, "tuned_from": base_id, "env": grid.image_env(point)}
        info = _inspect(record.tag)
        built[variant] = record.model_copy(update={
            "id": info.id, "size": info.size, "layers": info.layers, "labels": info.labels,
            "tuned_from": base_id, "serving_defaults": grid.image_env(point)})
        ctx.write(f"images/{variant}.json", built[variant])
    ctx.write("images.json", records.ImagesIndex(built))
    ctx.write("bench/grid.json", result)
    tuned = [v for v, g in result.images.items() if g.get("tuned_image")]
    return {"summary": f"{len(tuned)} image(s) given measured defaults: {', '.join(tuned) or '-'}"}


def _inspect(ref: str):  # -> slipway.stages.images.Inspected
    from slipway.stages.images import inspect_image

    return inspect_image(ref)


def measure_sizes(ctx: StageContext, entries: list[records.ImageEntry], images: dict[str, EngineImage],
                  models: list[str], docker_ok: bool) -> records.JsonObject:
    image_sizes: dict[str, Any] = {}
    cache_path = sizes.cache_path()
    cache = sizes.load_cache(cache_path)
    for entry in entries:
        variant = entry.variant
        if variant not in images:
            image_sizes[variant] = {"reason": "no image built for this variant"}
            continue
        if not docker_ok:
            image_sizes[variant] = {"reason": "no Docker engine to read the image from"}
            continue
        if images[variant].unavailable:
            image_sizes[variant] = {"reason": images[variant].unavailable}
            continue
        ctx.log(f"{variant}: image sizes (docker save, gzip per layer)")
        started = time.monotonic()
        try:
            tag = images[variant].tag
            if tag is None:
                raise KeyError(f"the record of {variant} names no tag")
            image_sizes[variant] = {"image": tag, **sizes.image_sizes(tag, cache)}
        except (SlipwayError, RuntimeError, KeyError, ValueError) as exc:
            image_sizes[variant] = {"reason": f"could not measure: {str(exc).splitlines()[0]}"}
            continue
        finally:
            sizes.save_cache(cache_path, cache)
        s = image_sizes[variant]
        ctx.log(f"{variant}: {s['compressed_bytes'] / 1e6:.0f} MB compressed, {s['uncompressed_bytes'] / 1e6:.0f} MB "
                f"uncompressed ({time.monotonic() - started:.0f}s)")
    model_files = {}
    for model in models:
        if (ctx.out / "models" / model / "model.json").is_file():
            model_files[model] = sizes.model_file_sizes(ctx.out / "models" / model)
    # The model packages and, when this release publishes it, the runtime (wheels/); else the
    # runtime in runtime/.
    wheels = [w for folder in ("wheels", "runtime")
              for w in sizes.wheel_sizes(ctx.out / folder, ctx.config.wheels.max_size_mib)]
    for w in wheels:
        if not w["within_limit"]:
            ctx.log(f"wheel {w['file']}: {w['mib']} MiB is over the {w['limit_mib']} MiB limit")
    return {"images": image_sizes, "wheels": wheels, "models": model_files}


def run(ctx: StageContext, variants: list[str] | None = None, **options: Any) -> StageResult:
    settings = BenchSettings.resolve(**options)
    entries, models = _scope(ctx, variants)
    bench_dir = ctx.out / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    work = bench_dir / "work"
    run_info = machine.new_run()
    ctx.log(f"bench run {run_info['run_id']}: models {', '.join(models) or '-'}; "
            f"variants {', '.join(e.variant for e in entries) or '-'}")
    if settings.runs < 30:
        ctx.log(f"only {settings.runs} timed runs per runtime: p95 is a rough estimate")
    load_before = machine.load_average()
    started = time.monotonic()

    in_process, cpp = measure_in_process(ctx, models, settings, work)
    imports = measure_imports(ctx, models, settings, cpp)
    images = images_in_engine(ctx, entries)
    served_results = measure_served(ctx, entries, images, settings)
    grid_results = (records.dump(_grid_for(ctx, entries, images, settings)) if settings.served and settings.grid
                    else {"skipped": True})
    docker_ok = bool(entries) and images and engine.reachable()
    size_results = measure_sizes(ctx, entries, images, models, bool(docker_ok))

    extra_libs = {}
    for model in in_process["models"].values():
        cpp_result = model.get("cpp", {})
        if cpp_result.get("available") and cpp_result.get("version"):
            extra_libs["slipway_runtime"] = cpp_result["version"]
    docker_version = ""
    if docker_ok:
        try:
            docker_version = engine.server_version()
        except SlipwayError:
            docker_version = ""
    results: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        **run_info,
        "project": ctx.plan.project,
        "version": ctx.plan.version,
        "git_commit": ctx.plan.sha,
        "machine": {**machine.machine_info(extra_libs), "docker_server": docker_version or None,
                    "load_average_before": load_before, "load_average_after": machine.load_average()},
        "settings": {"threads": settings.threads, "warmup": settings.warmup, "runs": settings.runs,
                     "served_seconds": settings.seconds, "concurrency": list(settings.concurrency),
                     "ready_runs": settings.ready_runs, "import_repeats": settings.import_repeats,
                     "grid": settings.grid, "grid_seconds": settings.grid_seconds},
        "scope": {"models": models, "variants": [e.variant for e in entries]},
        "inprocess": in_process,
        "imports": imports,
        "served": served_results,
        "grid": grid_results,
        "sizes": size_results,
        "seconds": round(time.monotonic() - started, 1),
    }
    checks = budget_checks.evaluate(ctx.config.budgets, results)
    failed = [c for c in checks if c.failed]
    results["budgets"] = {"ok": not failed, "checks": [c.to_json() for c in checks]}
    ctx.write("bench/results.json", records.BenchResults.model_validate(results))
    (bench_dir / "table.md").write_text(report.markdown(results))
    if report.chart(results, bench_dir / "chart.png") is None:
        ctx.log("bench: no chart.png (matplotlib is not installed; pip install 'slipway[bench]' for it)")
    shutil.rmtree(work, ignore_errors=True)
    ctx.log(f"bench: results in {bench_dir} (run {run_info['run_id']}, machine {results['machine']['fingerprint']})")
    if checks:
        ctx.log("budgets:\n" + budget_checks.table(checks))
    if failed:
        raise CheckError(
            f"{len(failed)} budget(s) not met: {', '.join(sorted({c.budget for c in failed}))}\n"
            + budget_checks.table(failed) + f"\n(all numbers: {bench_dir / 'results.json'})"
        )
    return {"summary": _summary(results, checks)}


def _summary(results: dict[str, Any], checks: list[budget_checks.Check]) -> str:
    parts = []
    for model, runtimes in results["inprocess"]["models"].items():
        cpp = runtimes.get("cpp", {})
        if cpp.get("speedup_vs_eager"):
            parts.append(f"{model}: C++ {cpp['speedup_vs_eager']['p50']:.1f}x eager")
        elif "torchscript" in runtimes and runtimes["torchscript"].get("total"):
            parts.append(f"{model}: TorchScript p50 {runtimes['torchscript']['total']['p50']:.1f} ms")
    measured = [c for c in checks if c.status != budget_checks.SKIPPED]
    parts.append(f"{len(measured)} budget(s) met" if measured else "no budgets set")
    return "; ".join(parts)
