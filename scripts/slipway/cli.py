"""The ``slipway`` command: one subcommand per release stage, plus local services.

Options can also come from ``SLIPWAY_*`` environment variables (``--config`` from
``SLIPWAY_CONFIG``, ``--out`` from ``SLIPWAY_OUT``, ``--plan`` from ``SLIPWAY_PLAN_FILE``).
Exit codes: 0 ok, 2 configuration, 3 build failure, 4 failed check, 5 service, 6 publish.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from slipway import __version__, records
from slipway.config import DEFAULT_CONFIG, ReleaseConfig, load_config
from slipway.context import StageContext, StageResult
from slipway.errors import ConfigError, SlipwayError
from slipway.plan import EVENTS, Trigger, git_sha, load_plan, make_plan, trigger_from_github
from slipway.settings import get_settings

STAGES = ("export", "wheels", "images", "smoke", "bench", "publish")
STAGE_HELP = {
    "export": "export each model (TorchScript, ONNX, SavedModel, frozen graph) and verify it",
    "wheels": "build the C++ runtime wheels and check them against the golden outputs",
    "images": "build one Docker image per variant",
    "smoke": "prove every image and wheel answers the golden images correctly",
    "bench": "measure latency, sizes and start-up; enforce the budgets",
    "publish": "push images and wheels, attach models and checksums (only if smoke passed)",
}


def _env(name: str, default: str | None = None) -> str | None:
    """The default of an option from its ``SLIPWAY_*`` variable (``slipway.settings``)."""
    value = getattr(get_settings(), name.lower())
    return default if value is None else value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=_env("CONFIG"),
        help="release.toml to read [SLIPWAY_CONFIG; default: the plan's 'config' with --plan, else release.toml]",
    )
    p.add_argument("--out", default=_env("OUT"), help="output folder [SLIPWAY_OUT; default dist/<version>]")
    p.add_argument("--plan", default=_env("PLAN_FILE"), help="plan JSON from 'slipway plan' [SLIPWAY_PLAN_FILE]")
    p.add_argument("-v", "--verbose", action="store_true", help="more output")


def _add_trigger(p: argparse.ArgumentParser) -> None:
    p.add_argument("--event", choices=EVENTS, default=_env("EVENT"), help="what triggered the run [SLIPWAY_EVENT]")
    p.add_argument("--ref", default=_env("REF", ""), help="git ref, e.g. v1.2.3 or refs/tags/v1.2.3 [SLIPWAY_REF]")
    p.add_argument("--sha", default=_env("SHA", ""), help="commit (default: git rev-parse HEAD)")
    dry = p.add_mutually_exclusive_group()
    dry.add_argument("--dry-run", dest="dry_run", action="store_true", default=None, help="never publish")
    dry.add_argument("--no-dry-run", dest="dry_run", action="store_false", help="publish (not for pull requests)")
    p.add_argument("--variants", default=_env("VARIANTS", ""), help="comma-separated subset of variants")
    p.add_argument("--image-registry", default=_env("IMAGE_REGISTRY"), help="override registries.images")
    p.add_argument("--package-index", default=_env("PACKAGE_INDEX"), help="override registries.packages")
    p.add_argument(
        "--github",
        action="store_true",
        help="read the trigger from GITHUB_EVENT_NAME, GITHUB_REF, GITHUB_SHA, GITHUB_EVENT_PATH",
    )
    p.add_argument("--github-event", metavar="FILE", help="a stored GitHub event payload (JSON) to plan from")
    p.add_argument("--github-event-name", default="push", help="event name for --github-event (default push)")


def _add_peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tune", action="store_true",
                   help="between images and smoke: measure the serving grid on the built images and give each "
                   "its best slots x threads (and batching) as defaults, a layer of ENV and LABEL on the built "
                   "image (slipway release does this when SLIPWAY_TUNE=1)")
    g = p.add_argument_group("peer benchmark (--peers; downloads TorchServe, LitServe and BentoML)")
    g.add_argument("--peers", action="store_true",
                   help="instead of the release's bench: Slipway's CPU images against TorchServe, LitServe and "
                   "BentoML on the same model and CPUs; writes peers.md, peers.svg and peers.json")
    g.add_argument("--peer", action="append", help="only this peer: torchserve, litserve, bentoml (repeatable)")
    g.add_argument("--cpus", default=_env("PEERS_CPUS"),
                   help="CPUs every server is pinned to, as taskset takes them [SLIPWAY_PEERS_CPUS; default: "
                   "the first two this process may use]")
    g.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    g.add_argument("--seconds", type=float, default=None, help="timed seconds per concurrency level (default 10)")
    g.add_argument("--warmup", type=float, default=None, help="warm-up seconds per level (default 2)")
    g.add_argument("--only", action="append", help="only this configuration key, e.g. torchserve-default")
    g.add_argument("--image", action="append", metavar="VARIANT=REF", help="the Slipway image to use for a variant")
    g.add_argument("--report-dir", help="where peers.md, peers.svg and peers.json go (default <out>/bench/peers)")


def tune_enabled() -> bool:
    """SLIPWAY_TUNE=1: ``slipway release`` tunes the images' serving defaults before smoke."""
    return get_settings().tune


def cmd_peers(args: argparse.Namespace, ctx: StageContext) -> int:
    from slipway.benchmark.peers.run import PeerSettings, from_context
    from slipway.benchmark.peers.spec import PEERS

    images = {}
    for item in args.image or []:
        variant, sep, ref = item.partition("=")
        if not sep or not variant or not ref:
            raise ConfigError(f"--image {item!r}: expected VARIANT=IMAGE, e.g. pytorch-cpu=slipway-examples:0.1.0")
        images[variant] = ref
    # No --variant: the project's CPU images that serve its PyTorch model (peers.run.scope).
    settings = PeerSettings(peers=tuple(args.peer or PEERS), variants=tuple(args.variant or ()),
                            cpus=args.cpus or "", only=tuple(args.only or ()))
    for name in ("rounds", "seconds", "warmup"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    from_context(ctx, settings, Path(args.report_dir) if args.report_dir else None, images)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slipway",
        description="Release pipeline for ML inference models: plan, export, wheels, images, smoke, bench, publish.",
        epilog="Exit codes: 2 configuration, 3 build failure, 4 failed check, 5 service, 6 publish.",
    )
    parser.add_argument("--version", action="version", version=f"slipway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="write the release plan (version, flags, matrices) as JSON")
    _add_common(p)
    _add_trigger(p)
    p.add_argument("--output", "-o", help="write the plan here (default: stdout)")
    p.set_defaults(func=cmd_plan)

    for stage in STAGES:
        p = sub.add_parser(stage, help=STAGE_HELP[stage], description=STAGE_HELP[stage])
        _add_common(p)
        if stage in ("export",):
            p.add_argument("--model", action="append", help="only this model (repeatable)")
        if stage == "wheels":
            p.add_argument(
                "--arch",
                default=_env("ARCH"),
                help="one wheel target of the plan (matrix.wheels), built on a machine of that architecture, "
                "as a GitHub wheels job runs it; the model packages are built by the first target's job only "
                "[SLIPWAY_ARCH]",
            )
        if stage in ("images", "smoke", "bench", "publish"):
            p.add_argument("--variant", action="append", help="only this variant (repeatable)")
        if stage == "images":
            p.add_argument("--base-image", help="use this base image for every variant")
            p.add_argument(
                "--host-ca-certs",
                choices=("auto", "yes", "no"),
                default=_env("HOST_CA_CERTS", "auto"),
                help="add the host's extra CA certificates to a locally built base image (local use only)",
            )
            step = p.add_mutually_exclusive_group()
            step.add_argument(
                "--prepare",
                action="store_true",
                help="only stage the build context; write context, dockerfile, build-args, labels and "
                "archive to GITHUB_OUTPUT (printed when it is unset) for another builder (Buildx)",
            )
            step.add_argument(
                "--record",
                action="store_true",
                help="only record an image built by another builder in images/<variant>.json "
                "(with --digest, or the saved tar of a dry run)",
            )
            p.add_argument(
                "--digest", default=_env("DIGEST"), help="with --record: the pushed manifest digest [SLIPWAY_DIGEST]"
            )
            p.add_argument(
                "--official-base",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="with --prepare: build on the variant's base image as named, with PyTorch's CPU index "
                "for CPU variants (default: on GitHub Actions only); --no-official-base builds the local base",
            )
        if stage == "bench":
            _add_peer_options(p)
        if stage == "smoke":
            p.add_argument(
                "--artifact",
                default=_env("ARTIFACT"),
                help="test only this artifact of the plan's smoke matrix: image:<variant> or wheels [SLIPWAY_ARTIFACT]",
            )
            p.add_argument(
                "--tfserving",
                choices=("auto", "image", "stub"),
                default=_env("TFSERVING"),
                help="model server beside a tfserving image: the real tensorflow/serving image, the REST "
                "stand-in, or auto (image on GitHub Actions, stub elsewhere) [SLIPWAY_TFSERVING]",
            )
            p.add_argument(
                "--summarize",
                action="store_true",
                help="test nothing; rebuild smoke/summary.json and smoke/table.md from the per-artifact results",
            )
        if stage == "publish":
            p.add_argument("--local", action="store_true", help="publish to the local registry and index")
            p.add_argument(
                "--kind",
                choices=("images", "github-release"),
                default=_env("PUBLISH_KIND"),
                help="one part of a release, as the jobs of _publish.yml run it: 'images' tags the smoke-tested "
                "digest (image, digest to GITHUB_OUTPUT); 'github-release' fills release/assets/ and "
                "writes release/notes.md [SLIPWAY_PUBLISH_KIND]",
            )
            p.add_argument("--image-registry", default=_env("IMAGE_REGISTRY"), help="override the plan's image registry")
            p.add_argument("--package-index", default=_env("PACKAGE_INDEX"), help="override the plan's package index")
        p.set_defaults(func=cmd_stage, stage=stage)

    p = sub.add_parser("release", help="run every stage in order: plan, export, wheels, images, smoke, bench, publish")
    _add_common(p)
    _add_trigger(p)
    p.add_argument("--local", action="store_true", help="a local release: start local services, publish to them")
    p.add_argument("--skip", action="append", default=[], choices=STAGES, help="skip a stage (repeatable)")
    p.add_argument("--host-ca-certs", choices=("auto", "yes", "no"), default=_env("HOST_CA_CERTS", "auto"))
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("services", help="local Docker engine, registry and package index")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("up", "start what is not running (idempotent)"),
        ("down", "stop what 'up' started, by PID"),
        ("status", "show what runs, as JSON"),
        ("env", "print shell exports that point docker at slipway's engine"),
    ):
        sp = ssub.add_parser(action, help=text, description=text)
        sp.add_argument("names", nargs="*", metavar="NAME", help="docker, registry or index (default: all)")
        if action in ("up", "down"):
            sp.add_argument(
                "--session",
                metavar="FILE",
                help="up: record in FILE what this call started; down: stop only what FILE records",
            )
        sp.set_defaults(func=cmd_services)

    p = sub.add_parser("schema", help="print the JSON Schema of release.toml (or write those of the records)")
    p.add_argument("--check", metavar="FILE", nargs="?", const="",
                   help="exit 1 if FILE differs from the current schema; with --records (no FILE): if DIR does")
    p.add_argument("--records", metavar="DIR", help="write the JSON Schema of the plan and of every record in "
                   "dist/<version>/ into DIR, one file each (slipway/schemas/ holds them)")
    p.set_defaults(func=cmd_schema)
    return parser


# --------------------------------------------------------------------------------------------


def _trigger(args: argparse.Namespace, root: Path) -> Trigger:
    from dataclasses import replace

    if args.github or args.github_event:
        if args.github_event:
            payload = json.loads(Path(args.github_event).read_text())
            name = args.github_event_name
            ref = args.ref or payload.get("ref", "")
            sha = args.sha or payload.get("after") or payload.get("pull_request", {}).get("head", {}).get("sha", "")
        else:
            name = os.environ.get("GITHUB_EVENT_NAME", "")
            ref = args.ref or os.environ.get("GITHUB_REF", "")
            sha = args.sha or os.environ.get("GITHUB_SHA", "")
            path = os.environ.get("GITHUB_EVENT_PATH")
            payload = json.loads(Path(path).read_text()) if path and Path(path).exists() else {}
        # The owner decides the default registries on GitHub (ghcr.io/<owner>).
        owner = ((payload.get("repository") or {}).get("owner") or {}).get("login") if args.github_event \
            else os.environ.get("GITHUB_REPOSITORY_OWNER")
        trig = trigger_from_github(name, ref, sha, payload, override=args.event, owner=owner or "")
        trig = replace(trig, on_github_runner=os.environ.get("GITHUB_ACTIONS") == "true")
        overrides: dict[str, Any] = {}
        if args.dry_run is not None:
            overrides["dry_run"] = args.dry_run
        if args.variants:
            overrides["variants"] = tuple(v for v in args.variants.split(",") if v)
    else:
        trig = Trigger(
            event=args.event or ("tag" if args.ref.startswith(("v", "refs/tags/")) else "local"),
            ref=args.ref,
            sha=args.sha,
            dry_run=args.dry_run,
            variants=tuple(v.strip() for v in (args.variants or "").split(",") if v.strip()),
        )
        overrides = {}
    trig = replace(
        trig,
        **overrides,
        gpu=_has_gpu(),
        sha=trig.sha or git_sha(root),
        image_registry=args.image_registry,
        package_index=args.package_index,
    )
    return trig


def _has_gpu() -> bool:
    from slipway import engine

    return engine.has_gpu()


def cmd_plan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    plan = make_plan(config, _trigger(args, config.root), config_path=args.config)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        records.write(Path(args.output), plan)
        print(f"plan for {plan.project} {plan.version} written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(records.dumps(plan))
    github_output = os.environ.get("GITHUB_OUTPUT")
    if args.github and github_output:
        with open(github_output, "a") as fh:
            fh.write(f"plan={records.dumps(plan, indent=None)}\n")
            fh.write(f"version={plan.version}\n")
    return 0


def _context(args: argparse.Namespace, config: ReleaseConfig, plan: records.Plan | None = None) -> StageContext:
    if plan is None:
        if args.plan:
            plan = load_plan(Path(args.plan))
        else:
            out_guess = Path(args.out) if args.out else None
            if out_guess and (out_guess / "plan.json").exists():
                plan = load_plan(out_guess / "plan.json")
            else:
                # No plan given: a local plan, as 'slipway plan --event local' would write.
                plan = make_plan(
                    config, Trigger(event="local", sha=git_sha(config.root), gpu=_has_gpu()), config_path=args.config
                )
    # Relative to where slipway runs (the workspace), like every other path on its command line.
    out = Path(args.out) if args.out else Path.cwd() / plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "plan.json").exists() or args.plan:
        records.write(out / "plan.json", plan)
    return StageContext(config=config, plan=plan, out=out, root=config.root, verbose=getattr(args, "verbose", False))


def run_stage(stage: str, ctx: StageContext, **options: Any) -> StageResult:
    """Run one stage and record its status and duration in stages.json."""
    module = importlib.import_module(f"slipway.stages.{stage}")
    ctx.log(f"== {stage}")
    started = time.monotonic()
    status, summary = "ok", ""
    try:
        result = module.run(ctx, **options) or {}
        summary = str(result.get("summary", ""))
        return result
    except SlipwayError as exc:
        status, summary = "failed", str(exc).splitlines()[0]
        raise
    except KeyboardInterrupt:
        status, summary = "interrupted", ""
        raise
    finally:
        record = ctx.read("stages.json", records.StagesRecord, records.StagesRecord({}))
        record.root[stage] = records.StageStatus(status=status, seconds=round(time.monotonic() - started, 1),
                                                 summary=summary)
        ctx.write("stages.json", record)
        ctx.log(f"== {stage}: {status} in {time.monotonic() - started:.1f}s {summary}")


def cmd_stage(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ctx = _context(args, config)
    options: dict[str, Any] = {}
    if getattr(args, "model", None):
        options["models"] = args.model
    if getattr(args, "arch", None):
        options["arch"] = args.arch
    if getattr(args, "variant", None):
        options["variants"] = args.variant
    stage = args.stage
    if stage == "bench" and args.peers:
        return cmd_peers(args, ctx)
    if stage == "bench" and args.tune:
        from slipway.stages.bench import tune

        ctx.log(tune(ctx, variants=args.variant)["summary"])
        return 0
    if stage == "images":
        if args.digest and not args.record:
            raise ConfigError("--digest goes with --record")
        if args.record:
            run_stage(stage, ctx, step="record", variants=args.variant, digest=args.digest)
            return 0
        options["base_image"] = args.base_image
        options["host_ca"] = args.host_ca_certs
        if args.prepare:
            options.update(step="prepare", official_base=args.official_base)
    if stage == "smoke":
        if args.tfserving:
            options["tfserving"] = args.tfserving
        if args.artifact:
            options["artifact"] = args.artifact
        if args.summarize:
            options["summarize_only"] = True
    if stage == "publish":
        if args.local:
            options["local"] = True
        if args.kind:
            options["kind"] = args.kind
        override_registries(ctx.plan, args.image_registry, args.package_index)
    run_stage(stage, ctx, **options)
    return 0


def override_registries(plan: records.Plan, image_registry: str | None, package_index: str | None) -> None:
    """Point the plan at other registries, naming each image as 'slipway plan' would."""
    if image_registry:
        registry = image_registry.rstrip("/")
        plan.registries.images = registry
        for entry in plan.matrix.images:
            entry.image = f"{registry}/{plan.project}-{entry.variant}"
    if package_index:
        plan.registries.packages = package_index


def summary_table(ctx: StageContext) -> str:
    stages = ctx.read("stages.json", records.StagesRecord, records.StagesRecord({})).root
    rows = [("stage", "status", "seconds", "result")]
    for name in ("plan", *STAGES):
        if name in stages:
            s = stages[name]
            rows.append((name, s.status, f"{s.seconds:.1f}", s.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


def cmd_release(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.local and not args.event:
        args.event = "local"
    started = time.monotonic()
    plan = make_plan(config, _trigger(args, config.root), config_path=args.config)
    ctx = _context(args, config, plan)
    (ctx.out / "stages.json").unlink(missing_ok=True)
    ctx.write("stages.json", records.StagesRecord({"plan": records.StageStatus(
        status="ok", seconds=round(time.monotonic() - started, 1), summary=f"{plan.project} {plan.version}")}))
    ctx.log(f"release {plan.project} {plan.version} ({plan.event}, dry run: {plan.dry_run}) into {ctx.out}")
    for skipped in plan.skipped:
        ctx.log(f"skipping variant {skipped.variant}: {skipped.reason}")
    for note in plan.notes:
        ctx.log(f"note: {note}")
    if args.local:
        from slipway import services

        services.up()
    try:
        # The plan says which stages this release has (a TensorFlow-only project builds no wheels).
        planned = plan.stages
        for stage in STAGES:
            if stage in args.skip:
                continue
            if stage not in planned:
                ctx.log(f"== {stage}: not planned (nothing for it in this release)")
                continue
            options: dict[str, Any] = {}
            if stage == "images":
                options["host_ca"] = args.host_ca_certs
            if stage == "publish" and args.local:
                options["local"] = True
            run_stage(stage, ctx, **options)
            if stage == "images" and tune_enabled():
                from slipway.stages.bench import tune

                ctx.log(f"== tune: {tune(ctx)['summary']}")
    finally:
        print("\n" + summary_table(ctx), file=sys.stderr)
    print(f"\nrelease {plan.version} done in {time.monotonic() - started:.0f}s; see {ctx.out}", file=sys.stderr)
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from slipway import services

    unknown = [n for n in args.names if n not in services.SERVICES]
    if unknown:
        raise ConfigError(f"unknown service(s) {', '.join(unknown)}: expected docker, registry or index")
    names = args.names or None
    session = Path(args.session) if getattr(args, "session", None) else None
    if args.action == "up":
        result = services.up(names)
        if session:
            started = [name for name, state in result.items() if state == "started"]
            previous = json.loads(session.read_text()) if session.exists() else []
            session.write_text(json.dumps(sorted(set(previous) | set(started))))
    elif args.action == "down":
        if session:
            recorded = json.loads(session.read_text()) if session.exists() else []
            names = [n for n in recorded if not args.names or n in args.names]
            if names:
                services.down(names)
            else:
                print("services: nothing was started by this session", file=sys.stderr)
            session.unlink(missing_ok=True)
        else:
            services.down(names)
    elif args.action == "status":
        print(json.dumps(services.status(), indent=2))
    else:
        from slipway import engine

        host = engine.docker_host()
        if host:
            print(f"export DOCKER_HOST={host}")
        print(f"export SLIPWAY_DOCKER={engine.cli_path()}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from slipway.config import json_schema

    if args.records:
        return _record_schemas(Path(args.records), check=args.check is not None)
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.check:
        current = Path(args.check).read_text() if Path(args.check).exists() else ""
        if current != text:
            print(f"{args.check} is stale: run 'slipway schema > {args.check}'", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


def _record_schemas(folder: Path, *, check: bool) -> int:
    """Write (or, with ``check``, compare) one JSON Schema file per record model."""
    schemas = records.json_schemas()
    if check:
        stale = sorted(name for name, text in schemas.items()
                       if not (folder / name).is_file() or (folder / name).read_text() != text)
        extra = sorted(p.name for p in folder.glob("*.schema.json") if p.name not in schemas)
        for name in stale:
            print(f"{folder / name} is stale: run 'slipway schema --records {folder}'", file=sys.stderr)
        for name in extra:
            print(f"{folder / name} describes no record: remove it", file=sys.stderr)
        return 1 if stale or extra else 0
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in schemas.items():
        (folder / name).write_text(text)
    for path in folder.glob("*.schema.json"):
        if path.name not in schemas:
            path.unlink()
    print(f"{len(schemas)} record schema(s) written to {folder}", file=sys.stderr)
    return 0


def config_path(args: argparse.Namespace) -> str:
    """--config, else the configuration the plan was made from (a stage job on GitHub gets only the
    plan file, and a calling repository may keep its release.toml elsewhere), else release.toml."""
    if args.config:
        return args.config
    plan_file = getattr(args, "plan", None)
    if plan_file:
        try:
            recorded = json.loads(Path(plan_file).read_text()).get("config")
        except (OSError, ValueError, AttributeError):
            recorded = None  # the stage reports an unreadable plan itself
        if isinstance(recorded, str) and recorded:
            return recorded
    return DEFAULT_CONFIG


def _failed(exc: SlipwayError) -> int:
    kind = type(exc).__name__.replace("Error", " error").lower()
    print(f"slipway: {kind}: {exc}", file=sys.stderr)
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    try:
        # The options' defaults come from the SLIPWAY_* variables: a wrong one stops here.
        parser = build_parser()
    except SlipwayError as exc:
        return _failed(exc)
    args = parser.parse_args(argv)
    if hasattr(args, "config"):
        args.config = config_path(args)
    try:
        code = args.func(args)
        # Flushed here, not at exit, so that a closed pipe is seen by the handler below.
        sys.stdout.flush()
        return code
    except SlipwayError as exc:
        return _failed(exc)
    except ModuleNotFoundError as exc:
        # A library of an extra this installation lacks (pytorch, tensorflow, serve, wheels...).
        print(f"slipway: this step needs the Python module {exc.name!r}, which is not installed here; "
              "install Slipway with the extra that brings it (README: 'Slipway as a tool for your own project'), "
              "e.g. pip install 'slipway[pytorch,serve,publish,bench,wheels]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slipway: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`slipway plan | head -1`): say nothing, exit as a process killed
        # by SIGPIPE would (128 + 13). stdout now points at /dev/null so that the interpreter's
        # final flush does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ConfigError", "main"]
