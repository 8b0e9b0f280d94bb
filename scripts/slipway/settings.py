"""Every ``SLIPWAY_*`` environment variable the ``slipway`` command reads, in one model.

``get_settings()`` reads the environment once into a frozen ``Settings`` (pydantic-settings) and
keeps it; a wrong value is a ``ConfigError`` naming the variable and the value, all problems at
once. The cache is keyed on the ``SLIPWAY_*`` variables themselves, so a process that changes one
(a test with ``monkeypatch.setenv``) gets a fresh parse; ``reset_settings()`` drops it outright.

``docs/settings.md`` is generated from this model (``python -m slipway.settings``); a test fails
when it is stale. The inference service's own knobs (``serving/config.py``: SLIPWAY_SLOTS,
SLIPWAY_THREADS, ...) are read inside the images, where slipway is not installed: not here.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from slipway.errors import ConfigError, ConfigProblem

PREFIX = "SLIPWAY_"

# Groups for the generated documentation, in order: field name prefix or name -> heading.
_GROUPS = {
    "cli": "Command-line options",
    "services": "Local services and the engine",
    "stages": "Stages",
    "bench": "Benchmark (`slipway bench`)",
    "publish": "Publishing",
}


def _field(default: Any, description: str, group: str, **kw: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"group": group}, **kw)


class Settings(BaseSettings):
    """What ``SLIPWAY_*`` variables set. Command-line options, where a command has them, win."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, case_sensitive=False, env_ignore_empty=True, extra="ignore", frozen=True,
    )

    # Defaults of command-line options (the option, where given, wins).
    config: str | None = _field(None, "`--config`: the release.toml to read.", "cli")
    out: str | None = _field(None, "`--out`: the output folder (default `dist/<version>`).", "cli")
    plan_file: str | None = _field(None, "`--plan`: a plan JSON written by `slipway plan`.", "cli")
    event: str | None = _field(None, "`--event`: what triggered the run (tag, dispatch, pull_request, local...).",
                               "cli")
    ref: str = _field("", "`--ref`: the git ref, e.g. `v1.2.3` or `refs/tags/v1.2.3`.", "cli")
    sha: str = _field("", "`--sha`: the commit (default: `git rev-parse HEAD`).", "cli")
    variants: str = _field("", "`--variants`: a comma-separated subset of the variants.", "cli")
    image_registry: str | None = _field(None, "`--image-registry`: overrides `registries.images`.", "cli")
    package_index: str | None = _field(None, "`--package-index`: overrides `registries.packages`.", "cli")
    arch: str | None = _field(None, "`slipway wheels --arch`: build one wheel target of the plan.", "cli")
    host_ca_certs: Literal["auto", "yes", "no"] = _field(
        "auto", "`--host-ca-certs`: add the host's extra CA certificates to a locally built base image.", "cli")
    digest: str | None = _field(None, "`slipway images --record --digest`: the pushed manifest digest.", "cli")
    artifact: str | None = _field(None, "`slipway smoke --artifact`: `image:<variant>` or `wheels`.", "cli")
    tfserving: Literal["auto", "image", "stub"] = _field(
        "auto", "`slipway smoke --tfserving`: the model server beside a tfserving image: the real "
        "`tensorflow/serving` image, the REST stand-in, or auto (image on GitHub Actions, stub elsewhere).", "cli")
    publish_kind: Literal["images", "github-release"] | None = _field(
        None, "`slipway publish --kind`: one part of a release, as the jobs of `_publish.yml` run it.", "cli")

    # Local services and the engine.
    state_dir: Path | None = _field(
        None, "The state folder of the local services (default `$XDG_STATE_HOME/slipway`, else "
        "`~/.local/state/slipway`).", "services")
    registry_addr: str = _field("127.0.0.1:5000", "host:port of the local registry.", "services")
    index_addr: str = _field("127.0.0.1:8765", "host:port of the local package index.", "services")
    build_cache_gb: int = _field(
        20, "GB of BuildKit cache the engine slipway starts keeps (it collects the rest).", "services", ge=1)
    no_gpu: bool = _field(False, "`1`: act as if the machine had no GPU (no `--gpus`, GPU images not run).",
                          "services")
    no_pull: bool = _field(False, "`1`: never try to pull the base image; build the local one.", "services")

    # Stages.
    wheels_builder: Literal["auto", "cibuildwheel", "local"] = _field(
        "auto", "How `slipway wheels` builds: cibuildwheel's manylinux containers, the local toolchain, or "
        "auto (cibuildwheel where an engine and the manylinux images are available).", "stages")
    prune: Literal["auto", "always", "never"] = _field(
        "auto", "Pruning of the vendored libtorch in the self-contained wheel (passed to its repair tool).",
        "stages")
    tfserving_image: str = _field("tensorflow/serving:2.20.0", "The TF Serving image `--tfserving image` runs.",
                                  "stages")

    # Benchmark.
    bench_threads: int | None = _field(None, "Intra-op threads in the in-process benchmark (default 2).",
                                       "bench", ge=1)
    bench_warmup: int | None = _field(None, "Warm-up runs before timing (default 10).", "bench", ge=0)
    bench_runs: int | None = _field(None, "Timed runs per model and runtime (default 60).", "bench", ge=1)
    bench_seconds: float | None = _field(None, "Seconds of each served load test (default 5).", "bench", gt=0)
    bench_ready_runs: int | None = _field(None, "Container starts timed to `/readyz` (default 3).", "bench", ge=1)
    bench_import_repeats: int | None = _field(None, "Timed imports of each runtime (default 3).", "bench", ge=0)
    bench_concurrency: Annotated[tuple[int, ...] | None, NoDecode] = _field(
        None, "Client counts of the served load test, comma-separated (default `1,8`).", "bench")
    bench_served: bool | None = _field(None, "`0`: skip the served benchmark (containers).", "bench")
    bench_grid: bool | None = _field(None, "`0`: skip the serving grid (worker processes x slots x threads, batching) of each image.",
                                     "bench")
    bench_grid_seconds: float | None = _field(None, "Seconds per concurrency level of a grid point (default 3).",
                                              "bench", gt=0)
    tune: bool = _field(False, "`1`: `slipway release` runs `slipway bench --tune` between images and smoke "
                        "(each image gets its best grid point as defaults).", "bench")
    peers_cpus: str | None = _field(None, "`slipway bench --peers --cpus`: the CPUs every server is pinned to "
                                    "(as taskset takes them; default the first two this process may use).", "bench")
    peers_cache: Path | None = _field(None, "Where the peer benchmark keeps the peers' virtualenvs (default "
                                      "`$XDG_CACHE_HOME/slipway/peers`).", "bench")

    # Publishing.
    registry_username: str | None = _field(None, "User name for the image registry (else docker's login).",
                                           "publish")
    registry_password: SecretStr | None = _field(None, "Password or token for the image registry.", "publish")
    retry_attempts: int = _field(5, "Attempts of a registry or index call that failed transiently.", "publish",
                                 ge=1)
    retry_base_s: float = _field(1.0, "First wait between attempts, doubled each time (seconds).", "publish",
                                 ge=0)

    @field_validator("bench_concurrency", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                numbers = tuple(int(v) for v in value.split(",") if v.strip())
            except ValueError:
                raise ValueError("expected client counts like 1,8") from None
            if not numbers or min(numbers) < 1:
                raise ValueError("expected client counts like 1,8, each at least 1")
            return numbers
        return value


def _snapshot() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX)))


_CACHE: dict[tuple[tuple[str, str], ...], Settings] = {}


def get_settings() -> Settings:
    """The settings of this process's environment, parsed once; ConfigError for a wrong value."""
    key = _snapshot()
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _parse(dict(key))
    return _CACHE[key]


def reset_settings() -> None:
    """Forget the parsed settings: the next ``get_settings()`` reads the environment again."""
    _CACHE.clear()


def _parse(environ: dict[str, str]) -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            var = PREFIX + str(err["loc"][0]).upper() if err["loc"] else PREFIX
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(ConfigProblem("environment", var, environ.get(var, err.get("input")), message))
        raise ConfigError(problems) from None


# ---------------------------------------------------------------------------------------------
# Documentation


def _type(annotation: Any) -> str:
    """A short type name for the table: ``int``, ``auto | yes | no``, ``path``..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is Annotated or (origin is not None and args and origin is not tuple):
        return _type(args[0])
    if origin is tuple:
        return f"list of {_type(args[0])} (comma-separated)"
    return {Path: "path", SecretStr: "secret"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def markdown() -> str:
    """docs/settings.md: every variable, grouped, with its type, default and description."""
    lines = [
        "# Settings: `SLIPWAY_*` environment variables",
        "",
        "Generated from `slipway.settings.Settings` by `python -m slipway.settings > docs/settings.md`;",
        "a test fails when this file is stale. A command-line option, where one exists, wins over its",
        "variable. An empty variable counts as unset. A wrong value stops `slipway` with exit code 2,",
        "naming the variable.",
        "",
        "The inference service inside the images reads its own knobs (`SLIPWAY_SLOTS`, `SLIPWAY_THREADS`,",
        "...): see `serving/config.py`. Slipway sets `SLIPWAY_MODEL_DIR` and `SLIPWAY_MAX_SIZE_MIB` for the",
        "wheel tools it runs in cibuildwheel's containers; they are not read by `slipway` itself.",
    ]
    for group, heading in _GROUPS.items():
        lines += ["", f"## {heading}", "", "| variable | type | default | description |", "|---|---|---|---|"]
        for name, info in Settings.model_fields.items():
            if (info.json_schema_extra or {}).get("group") != group:
                continue
            default = "" if info.default in (None, "") else f"`{info.default}`"
            lines.append(f"| `{PREFIX}{name.upper()}` | {_type(info.annotation)} | {default} | {info.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
