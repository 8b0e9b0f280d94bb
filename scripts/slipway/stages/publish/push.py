"""Pushing: the release tags of each image, and the wheels, that preflight found missing.

One loop over the tags (``push_tags``) serves both ways an image goes out:

- ``push_from_engine`` (``slipway publish``): the smoke-tested image is tagged in the local engine
  and pushed by it;
- ``tag_in_registry`` (``--kind images`` on GitHub): the digest the images job pushed gets the tag
  in the registry itself (``registry.tag_digest``), nothing pulled or rebuilt.

Either way the tag is read back from the registry and must name the image that was meant.
Transient failures are retried with backoff, a bounded number of times; a publish that still
fails half-way is completed by running it again (what is there is kept).
"""

from __future__ import annotations

from collections.abc import Callable

from slipway import registry
from slipway.context import StageContext
from slipway.errors import PublishError, RegistryError
from slipway.stages.publish import engine_calls
from slipway.stages.publish.jobs import UNKNOWN, ImageJob, WheelJob

# How one tag is put in place: (job, tag) -> None; the loop reads it back.
Put = Callable[[ImageJob, str], None]


def push_from_engine(job: ImageJob, tag: str) -> None:
    ref = f"{job.image}:{tag}"
    engine_calls.tag_image(job.local, ref)
    said = engine_calls.push_image(ref)
    if said is None:
        return
    # Whether another attempt may cure it is the registry's to say, not the engine's wording:
    # down or failing (Transient) is retried, a refusal of these credentials is final.
    try:
        registry.check_push_access(job.image)
    except RegistryError as exc:
        raise RegistryError(f"docker push {ref} failed: {exc}", status=exc.status) from exc
    except registry.Transient as exc:
        raise registry.Transient(f"docker push {ref} failed; {exc}") from exc
    raise PublishError(f"docker push {ref} failed: {said[-800:]}")


def tag_in_registry(job: ImageJob, tag: str) -> None:
    registry.tag_digest(job.image, job.image_id, tag)


def push_tags(
    ctx: StageContext, jobs: list[ImageJob], put: Put, *, dry_run: bool, words: tuple[str, str, str]
) -> None:
    """Put every release tag of every job that preflight did not find in place, and read it back.

    ``words``: how the log names the act, e.g. ``("push", "pushing", "pushed")``.
    """
    verb, doing, done = words
    for job in jobs:
        for tag, immutable in job.tags:
            state = job.state.get(tag, UNKNOWN)
            ref = f"{job.image}:{tag}"
            if state.kind == "same":
                ctx.log(f"{ref} already published ({str(job.digests.get(tag))[:19]}), leaving it")
                continue
            if state.left:
                ctx.log(f"{ref}: {state}, leaving it")
                continue
            if state.kind == "different" and immutable:  # preflight refused these already
                raise AssertionError(ref)
            if dry_run:
                ctx.log(f"dry run: would {verb} {ref} -> {job.image_id}")
                continue
            ctx.log(f"{doing} {ref} -> {job.image_id[:19]}")
            try:
                registry.retry(lambda j=job, t=tag: put(j, t), what=f"{verb} {ref}", log=ctx.log)
                found = registry.retry(
                    lambda j=job, t=tag: registry.manifest(j.image, t), what=f"read back {ref}", log=ctx.log
                )
            except registry.Transient as exc:
                raise PublishError(
                    f"{verb} {ref} failed after retries: {exc}; run publish again to complete it"
                ) from exc
            if found is None or not registry.same_image(found, job.image_id):
                raise PublishError(f"{ref} does not hold {job.image_id} after it was put there "
                                   f"({found and found.get('digest')})")
            job.digests[tag] = found["digest"]
            ctx.log(f"{done} {ref} ({found['digest']})")


def upload_wheels(ctx: StageContext, wheels: list[WheelJob], index: str, simple: str) -> None:
    """Upload each wheel preflight found missing, and read it back from the index's listing."""
    for wheel in wheels:
        if wheel.state == "same":
            ctx.log(f"{wheel.path.name} already on the index with the same content, leaving it")
            continue
        _upload(ctx, wheel, index, simple)


def _upload(ctx: StageContext, wheel: WheelJob, index: str, simple: str) -> None:
    def listed() -> tuple[bool, str | None]:
        return registry.index_file(simple, wheel.project, wheel.path.name)

    def upload() -> None:
        # An earlier attempt may have landed before its answer was lost: the index's own listing
        # says whether the file is there, and the read-back below decides whether it is this file.
        if not listed()[0]:
            registry.upload_wheel(index, wheel.path)

    ctx.log(f"uploading {wheel.path.name} to {index}")
    try:
        registry.retry(upload, what=f"upload {wheel.path.name}", log=ctx.log)
        present, digest = registry.retry(listed, what=f"read back {wheel.path.name}", log=ctx.log)
    except registry.Transient as exc:
        raise PublishError(f"uploading {wheel.path.name} failed after retries: {exc}; run publish again") from exc
    if not present or digest != wheel.sha256:
        raise PublishError(
            f"{wheel.path.name} on {simple} is not the file uploaded (sha256 {digest}); refusing to go on"
        )
    ctx.log(f"uploaded {wheel.path.name}")
