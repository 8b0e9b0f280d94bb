"""Recorded images into the local engine: what ``slipway smoke`` tests and ``slipway bench`` measures.

A record (``images.json`` or a GitHub job's ``images/<variant>.json``) names a saved tar (a dry
run), a pushed digest, or an image built here; the stages that use images start from it alike.
"""

from __future__ import annotations

from slipway import records, registry, services
from slipway.context import StageContext
from slipway.errors import CheckError


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
        out = services.docker("load", "-i", str(tar), timeout=1800).stdout
        loaded = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Loaded image")]
        if not loaded:
            raise CheckError(f"docker load of {tar} named no image: {out.strip()[:300]}")
        ref = loaded[-1]
        image_id = services.docker("image", "inspect", "-f", "{{.Id}}", ref, timeout=60).stdout.strip()
        return record.model_copy(update={"tag": ref, "id": image_id})
    if record.digest:
        ref = f"{record.image}@{record.digest}"
        ctx.log(f"{variant}: docker pull {ref}")

        def pull() -> None:
            res = services.docker("pull", "-q", ref, check=False, timeout=1800)
            if res.returncode != 0:
                text = (res.stderr or res.stdout or "").strip()
                if registry.is_transient_text(text):
                    raise registry.Transient(text.splitlines()[-1] if text else "docker pull failed")
                raise CheckError(f"docker pull {ref} failed: {text[-500:]}")

        try:
            registry.retry(pull, what=f"pull {ref}", log=ctx.log)
        except registry.Transient as exc:
            raise CheckError(f"docker pull {ref} failed after retries: {exc}") from exc
        image_id = services.docker("image", "inspect", "-f", "{{.Id}}", ref, timeout=60).stdout.strip()
        return record.model_copy(update={"tag": ref, "id": image_id})
    if record.id:
        return record
    raise CheckError(f"the record of {variant} names no image ID, digest or saved image")
