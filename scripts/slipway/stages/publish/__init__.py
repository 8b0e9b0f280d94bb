"""``slipway publish``: ship what the smoke gate proved, and nothing else, exactly once.

The parts, each readable alone:

- ``gate``: every planned artifact has a green smoke result, for the very image ID, digest and
  wheel sha256 about to go out, and the export it came from is not stale; otherwise publish
  refuses, naming each failure.
- ``assets``: SBOMs and release assets (model archives, SHA256SUMS), written deterministically.
- ``preflight``: before anything is pushed, the registry and index are asked what they already
  hold; content that conflicts with this release is refused, and what would be done is listed.
- ``push``: the one loop over image tags (pushed from the engine, or tagged in the registry)
  and the wheel uploads; transient failures retried with backoff, every result read back.
- ``local``: ``slipway publish`` (and ``--local``) in one go on this machine.
- ``github_modes``: ``--kind images`` and ``--kind github-release``, the jobs of ``_publish.yml``.

Every HTTP call to a registry or an index goes through ``slipway.registry``; every Docker engine
call through ``engine_calls``. Every failure is a ``PublishError`` (exit 6) or one of its
subclasses (``RegistryError`` with the registry's status and words, ``TransientError``).
"""

from __future__ import annotations

from slipway.context import StageContext, StageResult
from slipway.errors import PublishError
from slipway.stages.publish import github_modes
from slipway.stages.publish import local as _local
from slipway.stages.publish.jobs import image_tags

KINDS = ("images", "github-release")

__all__ = ["KINDS", "image_tags", "run"]


def run(
    ctx: StageContext, variants: list[str] | None = None, local: bool = False, kind: str | None = None
) -> StageResult:
    if kind == "images":
        return github_modes.publish_images(ctx, variants)
    if kind == "github-release":
        return github_modes.github_release(ctx)
    if kind is not None:
        raise PublishError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    return _local.run(ctx, variants, local=local)
