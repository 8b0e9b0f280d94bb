"""The typed records the stages exchange (slipway.records): schemas, damage, and the boundary rule."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from plans import bare_plan
from test_smoke_fixtures import ROOT, TORCH_MODEL, make_project, write_fake_export

from slipway import records
from slipway.cli import main
from slipway.errors import RecordError
from slipway.stages import wheels

SLIPWAY = ROOT / "scripts" / "slipway"
GOLDEN_PLANS = sorted((ROOT / "tests" / "golden").glob("plan-*.json"))


# --------------------------------------------------------------------------------------------
# Schemas


def test_committed_record_schemas_are_current(tmp_path, capsys):
    committed = {p.name: p.read_text() for p in records.SCHEMA_DIR.glob("*.schema.json")}
    assert committed == records.json_schemas(), (
        "stale record schemas: run 'slipway schema --records scripts/slipway/schemas' (make schema) and commit"
    )
    assert main(["schema", "--records", str(records.SCHEMA_DIR), "--check"]) == 0
    # The check itself fails on a stale, a missing and a leftover schema, naming each.
    stale = tmp_path / "schemas"
    assert main(["schema", "--records", str(stale)]) == 0
    (stale / "plan.schema.json").write_text("{}\n")
    (stale / "wheels.schema.json").unlink()
    (stale / "old.schema.json").write_text("{}\n")
    capsys.readouterr()
    assert main(["schema", "--records", str(stale), "--check"]) == 1
    err = capsys.readouterr().err
    assert "plan.schema.json is stale" in err and "wheels.schema.json is stale" in err
    assert "old.schema.json describes no record" in err


def test_the_schemas_describe_what_is_written():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((records.SCHEMA_DIR / "plan.schema.json").read_text())
    for path in GOLDEN_PLANS:
        jsonschema.validate(json.loads(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**json.loads(GOLDEN_PLANS[0].read_text()), "dry_rn": True}, schema)


def test_golden_plans_round_trip_byte_for_byte():
    for path in GOLDEN_PLANS:
        assert records.dumps(records.read(path, records.Plan)) == path.read_text(), path


# --------------------------------------------------------------------------------------------
# read / write


def test_read_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "images" / "alpha.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"variant": "alpha", "model": "m", "runtime": "onnx", "device": "cpu",
                                "image": "r/x", "size": "big"}))
    with pytest.raises(RecordError) as err:
        records.read(path, records.ImageRecord)
    assert str(path) in str(err.value) and "size" in str(err.value) and err.value.exit_code == 4
    # A typo in a key Slipway writes is an error, not an ignored value.
    path.write_text(json.dumps({"variant": "alpha", "model": "m", "runtime": "onnx", "device": "cpu",
                                "image": "r/x", "digets": "sha256:0"}))
    with pytest.raises(RecordError, match="digets"):
        records.read(path, records.ImageRecord)
    assert records.read(tmp_path / "absent.json", records.ImageRecord, None) is None
    with pytest.raises(RecordError, match="is missing"):
        records.read(tmp_path / "absent.json", records.ImageRecord)


def test_write_is_atomic_and_leaves_unset_fields_out(tmp_path):
    record = records.ImageRecord(variant="a", model="m", runtime="onnx", device="cpu", image="r/a", digest=None)
    path = records.write(tmp_path / "images" / "a.json", record)
    assert json.loads(path.read_text()) == {"variant": "a", "model": "m", "runtime": "onnx", "device": "cpu",
                                            "image": "r/a", "digest": None}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    assert records.read(path, records.ImageRecord) == record


# Every record type, a valid instance of it (as the stages write them), for the damage tests.
def _valid_records(out: Path) -> dict[str, tuple[type[records.BaseModel], object]]:
    image = {"variant": "alpha", "model": "shapes-torch", "runtime": "torchscript", "device": "cpu",
             "image": "127.0.0.1:5000/rec/rec-alpha", "tag": "127.0.0.1:5000/rec/rec-alpha:0.0.1",
             "id": "sha256:" + "a" * 64, "size": 1000, "layers": [], "labels": {}}
    result = {"artifact": "image:alpha", "kind": "image", "ok": True, "error": None, "variant": "alpha",
              "arch": "amd64", "model": "shapes-torch", "runtime": "torchscript", "device": "cpu",
              "images": 3, "min_iou": 1.0, "max_score_diff": 0.0, "tolerance": {"iou": 0.99, "score": 0.0001}}
    return {
        "stages.json": (records.StagesRecord, {"plan": {"status": "ok", "seconds": 0.1, "summary": "rec 0.0.1"}}),
        "images.json": (records.ImagesIndex, {"alpha": image}),
        "images/alpha.json": (records.ImageRecord, image),
        "smoke/image-alpha.json": (records.SmokeResult, result),
        "smoke/summary.json": (records.SmokeSummary, {
            "ok": True, "failed": [], "version": "0.0.1", "sha": "0" * 40, "gpu_present": False,
            "artifacts": {"image:alpha": {"ok": True, "error": "", "kind": "image", "variant": "alpha"}},
            "table": []}),
    }


# (record, where a wrong type goes, the command that reads it). Each command reads the damaged
# record before it needs a Docker engine or a build.
SUMMARIZE = ["smoke", "--summarize"]
DAMAGED = {
    "stages.json": (["plan", "seconds"], SUMMARIZE),
    "images.json": (["alpha", "size"], ["smoke", "--variant", "alpha"]),
    "images/alpha.json": (["size"], ["smoke", "--variant", "alpha"]),
    "smoke/image-alpha.json": (["min_iou"], SUMMARIZE),
    "smoke/summary.json": (["failed"], SUMMARIZE),
    "models/shapes-torch/model.json": (["labels"], SUMMARIZE),
    "models/shapes-torch/golden/reference.json": (["images"], SUMMARIZE),
}


@pytest.fixture(scope="module")
def release_folder(tmp_path_factory):
    """A project, its plan and an output folder holding one valid record of each kind."""
    tmp = tmp_path_factory.mktemp("records")
    config = make_project(tmp / "proj", name="rec", models=TORCH_MODEL, registry="127.0.0.1:5000/rec",
                          variants=[{"name": "alpha", "model": "shapes-torch", "runtime": "torchscript",
                                     "dockerfile": "dockerfiles/pytorch.Dockerfile", "target": "pytorch-cpu"}])
    entry = {"variant": "alpha", "model": "shapes-torch", "framework": "pytorch", "runtime": "torchscript",
             "device": "cpu", "dockerfile": "dockerfiles/pytorch.Dockerfile", "target": "pytorch-cpu",
             "platforms": "linux/amd64", "image": "127.0.0.1:5000/rec/rec-alpha"}
    plan = bare_plan("0.0.1", project="rec", matrix={
        "images": [entry],
        "smoke": [{"artifact": "image:alpha", "kind": "image", "variant": "alpha", "device": "cpu",
                   "arches": "amd64"}]})
    plan_file = records.write(tmp / "plan.json", plan)
    out = tmp / "out"
    write_fake_export(out / "models" / "shapes-torch", name="shapes-torch")
    for name, (model, data) in _valid_records(out).items():
        records.write(out / name, model.model_validate(data))
    return config, plan_file, out


def _run(capsys, release_folder, out: Path, args: list[str]) -> tuple[int, str]:
    config, plan_file, _ = release_folder
    capsys.readouterr()
    code = main([*args, "--config", str(config), "--plan", str(plan_file), "--out", str(out)])
    return code, capsys.readouterr().err


def _copy(release_folder, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(release_folder[2], out)
    return out


def test_the_undamaged_folder_reads(release_folder, tmp_path, capsys):
    out = _copy(release_folder, tmp_path)
    code, err = _run(capsys, release_folder, out, SUMMARIZE)
    assert code == 0, err


@pytest.mark.parametrize("damage", ["truncated", "wrong type"])
@pytest.mark.parametrize("record", list(DAMAGED))
def test_each_damaged_record_stops_its_reader_with_exit_4_naming_it(release_folder, tmp_path, capsys, record, damage):
    out = _copy(release_folder, tmp_path)
    path = out / record
    where, args = DAMAGED[record]
    if damage == "truncated":
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
    else:
        data = json.loads(path.read_text())
        node = data
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = {"not": ["what", "the", "model", "says"]}
        path.write_text(json.dumps(data))
    code, err = _run(capsys, release_folder, out, args)
    assert code == RecordError.exit_code == 4, err
    assert str(path) in err and "damaged" in err and "Traceback" not in err, err
    if damage == "wrong type":
        assert ".".join(where[1:] if record == "images.json" or record == "stages.json" else where) in err, err


# publish's own records, each with the command that reads it: ``publish --kind github-release``
# reads publish/<variant>.json (what the images job tagged); a dry-run ``publish`` reads
# release.json first (a real publish's record is never overwritten by a dry run).
PUBLISH_READERS = {
    "publish/alpha.json": (["tags"], ["publish", "--kind", "github-release"]),
    "release.json": (["images"], ["publish"]),
}


def _published_folder(release_folder, tmp_path: Path) -> Path:
    """The release folder with a current export (so that the gate lets publish go on) and one valid
    record of each of publish's own kinds."""
    config, _plan_file, _ = release_folder
    out = _copy(release_folder, tmp_path)
    write_fake_export(out / "models" / "shapes-torch", name="shapes-torch", config=config, version="0.0.1")
    image = "127.0.0.1:5000/rec/rec-alpha"
    records.write(out / "publish" / "alpha.json", records.PublishedImage(
        variant="alpha", image=image, digest="sha256:" + "b" * 64, dry_run=True, tags={"0.0.1": None}))
    records.write(out / "publish-plan.json", records.PublishPlan(dry_run=True, conflicts=[], actions=[
        records.PublishAction(action="push", what="image", ref=f"{image}:0.0.1", image_id="sha256:" + "a" * 64,
                              state="absent", immutable=True)]))
    records.write(out / "release.json", records.ReleaseRecord(
        project="rec", version="0.0.1", sha="0" * 40, prerelease=False, dry_run=True, images={}, wheels=[],
        models={}, sboms=[], smoke=records.ReleaseSmoke(ok=True, gpu_present=False)))
    return out


def test_the_github_release_reads_the_undamaged_publish_records(release_folder, tmp_path, capsys):
    out = _published_folder(release_folder, tmp_path)
    code, err = _run(capsys, release_folder, out, ["publish", "--kind", "github-release"])
    assert code == 0, err
    release = records.read(out / "release.json", records.ReleaseRecord)
    assert release.images["alpha"].tags == {"0.0.1": None} and release.smoke.ok
    assert records.read(out / "release" / "assets" / "release.json", records.ReleaseRecord) == release
    assert records.read(out / "publish-plan.json", records.PublishPlan).actions[0].state == "absent"


@pytest.mark.parametrize("damage", ["truncated", "wrong type"])
@pytest.mark.parametrize("record", list(PUBLISH_READERS))
def test_each_damaged_publish_record_stops_its_reader_with_exit_4_naming_it(
    release_folder, tmp_path, capsys, record, damage
):
    out = _published_folder(release_folder, tmp_path)
    path = out / record
    where, args = PUBLISH_READERS[record]
    if damage == "truncated":
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
    else:
        data = json.loads(path.read_text())
        data[where[0]] = ["not", "what", "the", "model", "says"]
        path.write_text(json.dumps(data))
    code, err = _run(capsys, release_folder, out, args)
    assert code == RecordError.exit_code == 4, err
    assert str(path) in err and "damaged" in err and "Traceback" not in err, err
    if damage == "wrong type":
        assert where[0] in err, err
    # Nothing was staged or written over: the damaged record is still there, as it was found.
    assert not (out / "release" / "assets").exists()


def test_publish_plan_is_written_by_publish_and_read_by_nothing(release_folder, tmp_path):
    """No command reads publish-plan.json (publish writes it afresh, before it pushes): the record
    is checked where it is written, and a damaged one is an error for whoever reads it."""
    out = _published_folder(release_folder, tmp_path)
    readers = [p.relative_to(SLIPWAY).as_posix() for p in SLIPWAY.rglob("*.py")
               if "publish-plan.json" in p.read_text() and "ctx.write(\"publish-plan.json\"" not in p.read_text()]
    assert all(r in ("records.py", "stages/publish/preflight.py") for r in readers), readers
    path = out / "publish-plan.json"
    path.write_text(path.read_text().replace('"push"', '"shove"'))
    with pytest.raises(RecordError, match=r"actions\[0\]\.action") as err:
        records.read(path, records.PublishPlan)
    assert str(path) in str(err.value) and err.value.exit_code == 4


def test_a_missing_or_damaged_plan_is_a_configuration_error_naming_it(release_folder, tmp_path, capsys):
    config, _plan_file, _ = release_folder
    out = _copy(release_folder, tmp_path)
    for text, expected in ((None, "plan file not found"), ('{"schema_version": 1, "project": 3}', "project")):
        plan = tmp_path / "plan.json"
        plan.unlink(missing_ok=True)
        if text is not None:
            plan.write_text(text)
        capsys.readouterr()
        code = main([*SUMMARIZE, "--config", str(config), "--plan", str(plan), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and str(plan) in err and expected in err, err


@pytest.mark.parametrize("damage", ["truncated", "wrong type", "missing"])
def test_a_damaged_wheels_record_is_an_error_not_a_rebuild(tmp_path, damage):
    folder = tmp_path / "wheels"
    folder.mkdir()
    path = folder / "wheels.json"
    if damage == "truncated":
        path.write_text('{"version": "0.1.0", "ok": tr')
    elif damage == "wrong type":
        path.write_text(json.dumps({"version": "0.1.0", "ok": ["yes"]}))
    if damage == "missing":
        assert wheels.reuse(folder, "fingerprint") is None  # optional: nothing to reuse
        with pytest.raises(RecordError, match="is missing"):
            records.read(path, records.WheelsRecord)
        return
    with pytest.raises(RecordError) as err:
        wheels.reuse(folder, "fingerprint")
    assert str(path) in str(err.value) and err.value.exit_code == 4


@pytest.mark.parametrize("name", sorted(records.SCHEMAS))
def test_every_record_model_refuses_damage_naming_the_file(tmp_path, name):
    model = records.SCHEMAS[name]
    path = tmp_path / name.replace(".schema", "")
    for text, expected in (('{"a": ', "not valid JSON"), ("[1, 2]", "does not match"), (None, "is missing")):
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        with pytest.raises(RecordError, match=expected) as err:
            records.read(path, model)
        assert str(path) in str(err.value) and err.value.exit_code == 4


# --------------------------------------------------------------------------------------------
# No untyped data crosses a stage boundary


# Modules whose public functions hand data from one stage to another (the records and their
# readers) or make a stage's records.
BOUNDARY = [SLIPWAY / "records.py", SLIPWAY / "outputs.py", SLIPWAY / "context.py", SLIPWAY / "cli.py",
            *sorted((SLIPWAY / "stages").rglob("*.py"))]
NOT_YET: set[str] = set()
# Raw JSON a stage may read or write: what is not a record of dist/<version>/.
RAW_JSON_ALLOWED = {
    ("wheels.py", "_build_runtime"): "the runtime build cache in the state folder, not a release record",
    ("wheels.py", "source_fingerprint"): "hashes JSON text, reads no file",
    ("export.py", "export_inputs"): "hashes JSON text, reads no file",
    ("export.py", "_fingerprint"): "hashes JSON text, reads no file",
    ("export.py", "run"): "the fingerprint file beside model.json (JSON text of export_inputs)",
    ("images.py", "inspect_image"): "docker's own output",
    ("cli.py", "_trigger"): "the GitHub event payload",
    ("cli.py", "cmd_services"): "the services' session file and status, in the state folder",
    ("cli.py", "cmd_schema"): "release.toml's JSON Schema",
    ("cli.py", "config_path"): "a lenient look at the plan's 'config' before the stage reads the plan",
    ("wheels.py", "build_local"): "the report of native/tools/repair_wheel.py, a file of the build's own",
    ("wheels.py", "check_golden"): "the result file of native/tools/check_wheel.py, a file of the check's own",
    ("engine_calls.py", "inspect_image"): "docker's own output",
    ("assets.py", "sbom_ref"): "a CycloneDX SBOM (slipway.sbom), not a record of Slipway's",
    ("assets.py", "_sbom_current"): "a CycloneDX SBOM (slipway.sbom), not a record of Slipway's",
}
# Public functions that hand over JSON that is not a record: another tool's own output.
UNTYPED_ALLOWED = {
    ("engine_calls.py", "inspect_image"): "docker's own 'image inspect' output",
}
UNTYPED_RECORD_CALLS = {"read_record", "read_json", "write_json"}


def _checked_modules() -> list[Path]:
    return [p for p in BOUNDARY if not NOT_YET & {p.stem, *p.parts}]


def _functions(tree: ast.Module):
    """(function, enclosing top-level name) for every function, methods included."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, node.name
            for inner in ast.walk(node):
                if inner is not node and isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield inner, node.name
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield item, node.name


def _untyped(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    text = ast.unparse(annotation).replace(" ", "")
    return any(t in text for t in ("dict[str,Any]", "Dict[str,Any]", "list[Any]", "Mapping[str,Any]"))


def test_no_public_function_of_a_stage_takes_or_returns_untyped_json():
    found = []
    for path in _checked_modules():
        tree = ast.parse(path.read_text())
        for fn, top in _functions(tree):
            if (fn.name.startswith("_") and not fn.name.startswith("__")) or top.startswith("_"):
                continue
            if (path.name, fn.name) in UNTYPED_ALLOWED:
                continue
            args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
            for a in args:
                if _untyped(a.annotation):
                    found.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}({a.arg}: {ast.unparse(a.annotation)})")
            if _untyped(fn.returns):
                found.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} -> {ast.unparse(fn.returns)}")
    assert found == [], "untyped data at a stage boundary (use a model of slipway.records):\n" + "\n".join(found)


def test_stages_read_and_write_records_only_through_their_models():
    found = []
    for path in _checked_modules():
        if path.name == "records.py":
            continue
        tree = ast.parse(path.read_text())
        for fn, top in _functions(tree):
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                owner = node.func.value.id if isinstance(node.func, ast.Attribute) and isinstance(
                    node.func.value, ast.Name) else ""
                raw = owner == "json" and name in ("load", "loads", "dump", "dumps")
                if name in UNTYPED_RECORD_CALLS or (raw and (path.name, top) not in RAW_JSON_ALLOWED):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} in {top}: {ast.unparse(node.func)}")
    assert found == [], "a stage reads or writes JSON past slipway.records:\n" + "\n".join(found)


def test_no_untyped_record_helper_is_left():
    """The untyped helpers (``read_record``, ``write_json``) are gone; the plan is read by attribute,
    never by key."""
    users = []
    for path in sorted(SLIPWAY.rglob("*.py")):
        text = path.read_text()
        for word in ("def read_record", "def write_json", "def __getitem__", "plan[\"", "plan['"):
            if word in text:
                users.append(f"{path.relative_to(SLIPWAY).as_posix()}: {word}")
    assert users == [], users
    with pytest.raises(TypeError):
        records.Plan.model_validate(json.loads(GOLDEN_PLANS[0].read_text()))["version"]  # type: ignore[index]
