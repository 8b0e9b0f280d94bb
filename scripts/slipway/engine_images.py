"""Recorded images into the local engine: what ``slipway smoke`` tests and ``slipway bench`` measures.

A record (``images.json`` or a GitHub job's ``images/<variant>.json``) names a saved tar (a dry
run), a pushed digest, or an image built here; the stages that use images start from it alike.
"""

from __future__ import annotations

from slipway import engine, records, registry
from slipway.context import StageContext
from slipway.errors import CheckError, SlipwayError


def materialize(ctx: StageContext, record: records.ImageRecord) -> records.ImageRecord:
    """Make the recorded image present in the engine; return the record with ``tag`` and ``id``.

    Order: a saved tar (a dry run's Buildx build; what was saved is what is tested), the pushed
    digest (never a tag, which could move), then an image built here (its ID).
    """
    variant = record.variant
    if record.archive:
        tar = ctx.out / "images" / record.archive
        if not tar.exists():
            raise CheckError(f"the record of {variant} names {tar}, which is not there")
        ctx.log(f"{variant}: docker load -i {tar.name}")
        try:
            loaded = engine.load(tar)
        except SlipwayError as exc:
            raise CheckError(f"docker load of {tar} failed: {exc}") from exc
        if not loaded:
            raise CheckError(f"docker load of {tar} named no image")
        ref = loaded[-1]
        return record.model_copy(update={"tag": ref, "id": engine.image_id(ref)})
    if record.digest:
        ref = f"{record.image}@{record.digest}"
        ctx.log(f"{variant}: docker pull {ref}")

        try:
            # engine.pull raises EngineTransient (a registry.Transient) only for what another
            # attempt may cure; a refusal or an absent digest is final at once.
            image_id = registry.retry(lambda: engine.pull(ref), what=f"pull {ref}", log=ctx.log)
        except registry.Transient as exc:
            raise CheckError(f"docker pull {ref} failed after retries: {exc}") from exc
        except SlipwayError as exc:
            raise CheckError(f"docker pull {ref} failed: {exc}") from exc
        return record.model_copy(update={"tag": ref, "id": image_id})
    if record.id:
        return record
    raise CheckError(f"the record of {variant} names no image ID, digest or saved image")
