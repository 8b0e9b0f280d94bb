"""Sizes: images (compressed and uncompressed, largest layers), wheels, model files.

Compressed image size is what a ``docker pull`` downloads: the sum of the gzip-compressed layers.
Bench runs before publish, so there is no registry manifest of this build to read the sizes from
(one from an earlier release would describe other layers). Instead ``docker save`` streams the
image and each layer tar is gzip-compressed here at level 6, counting the bytes: ``docker push``
compresses with Go's ``gzip.NewWriter``, whose default level is 6. zlib's level 6 is not byte for
byte the same: against a registry manifest of the same pushed image it came out 3.2% smaller. Results are cached by layer digest (the sha256 of the
uncompressed layer, which names its content) in slipway's state folder: a layer shared by several
images, or unchanged since an earlier run, is compressed once, and an image whose layers are all
known is not saved at all.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from slipway import engine, records, services
from slipway.errors import ServiceError

GZIP_LEVEL = 6
CHUNK = 1 << 20
KEEP_SMALL = 4 << 20  # small members (manifest, image config) are kept to be parsed


def gzip_size(stream, level: int = GZIP_LEVEL) -> int:
    """Bytes of the gzip stream of everything read from ``stream``."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    total = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        total += len(comp.compress(chunk))
    return total + len(comp.flush())


def _digest_of(member_name: str) -> str | None:
    """OCI layout names a blob by its digest: ``blobs/sha256/<hex>``."""
    parts = member_name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    return None


def layer_sizes(ref: str, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Uncompressed and gzip sizes of every layer of ``ref``, oldest first, with the command that made it.

    ``cache`` maps a layer's diff id to ``{"size", "gzip", "created_by"}`` (and, under
    ``_saved_as``, names in the older save format to diff ids); it is updated in place.
    """
    info = engine.image_inspect(ref)
    diff_ids = list((info.get("RootFS") or {}).get("Layers") or [])
    if diff_ids and all(d in cache and "created_by" in cache[d] for d in diff_ids):
        layers = [{"diff_id": d, **cache[d]} for d in diff_ids]
        return {"id": info["Id"], "size": int(info["Size"]), "layers": layers, "cached": True}
    members: dict[str, dict[str, Any]] = {}
    # The older save format names a layer "<v1 id>/layer.tar"; a v1 id pins the layer chain below
    # it, so the diff id it stood for last time is still the one it stands for.
    saved_as: dict[str, str] = cache.setdefault("_saved_as", {})
    small: dict[str, bytes] = {}
    # A save that the engine cannot complete (no space left for its export, say) is an EngineError
    # with the engine's own words, or a stream that ends early or holds nothing.
    broken: tarfile.TarError | None = None
    try:
        with engine.save_reader(ref) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                if member.size <= KEEP_SMALL:
                    data = f.read()
                    small[member.name] = data
                    members[member.name] = {"size": member.size, "gzip": gzip_size(io.BytesIO(data))}
                    continue
                digest = _digest_of(member.name) or saved_as.get(member.name)
                if digest and "gzip" in cache.get(digest, {}):
                    members[member.name] = cache[digest]
                    continue
                members[member.name] = {"size": member.size, "gzip": gzip_size(f)}
    except tarfile.TarError as exc:
        broken = exc
    if broken is not None or "manifest.json" not in small:
        raise ServiceError(f"docker save {ref} failed: no image in its output ({broken or 'no manifest'})")
    manifest = json.loads(small["manifest.json"])[0]
    config = json.loads(small[manifest["Config"]])
    diff_ids = config.get("rootfs", {}).get("diff_ids") or diff_ids
    # A base image imported from a root filesystem has no command, only a comment.
    commands = [h.get("created_by") or h.get("comment") or "(base image)"
                for h in config.get("history", []) if not h.get("empty_layer")]
    layers = []
    for i, path in enumerate(manifest["Layers"]):
        diff_id = diff_ids[i] if i < len(diff_ids) else path
        sizes = cache.get(diff_id) or members[path]
        command = _short_command(commands[i]) if len(commands) == len(manifest["Layers"]) else ""
        cache[diff_id] = {"size": sizes["size"], "gzip": sizes["gzip"], "created_by": command}
        if _digest_of(path) is None:
            saved_as[path] = diff_id
        layers.append({"diff_id": diff_id, "size": sizes["size"], "gzip": sizes["gzip"], "created_by": command})
    return {"id": info["Id"], "size": int(info["Size"]), "layers": layers, "cached": False}


def _short_command(command: str) -> str:
    text = " ".join(command.replace("/bin/sh -c #(nop) ", "").split())
    return text[:160]


def image_sizes(ref: str, cache: dict[str, dict[str, Any]], top: int = 5) -> dict[str, Any]:
    """One image: uncompressed (as ``docker image inspect`` reports it) and compressed totals."""
    sizes = layer_sizes(ref, cache)
    layers = sizes["layers"]
    return {
        "id": sizes["id"],
        "uncompressed_bytes": sizes["size"],
        "layers_bytes": sum(layer["size"] for layer in layers),
        "compressed_bytes": sum(layer["gzip"] for layer in layers),
        "layer_count": len(layers),
        "from_cache": sizes["cached"],
        "largest_layers": sorted(layers, key=lambda layer: -layer["size"])[:top],
        "method": f"docker save, each layer gzip level {GZIP_LEVEL}",
    }


def wheel_sizes(wheels_dir: Path, limit_mib: float, top: int = 3) -> list[dict[str, Any]]:
    """Every wheel against the index's size limit, with the members that weigh most."""
    out = []
    for wheel in sorted(wheels_dir.glob("*.whl")) if wheels_dir.is_dir() else []:
        size = wheel.stat().st_size
        largest: list[dict[str, Any]] = []
        try:
            with zipfile.ZipFile(wheel) as zf:
                infos = sorted(zf.infolist(), key=lambda i: -i.compress_size)[:top]
                largest = [{"path": i.filename, "unpacked": i.file_size, "in_wheel": i.compress_size}
                           for i in infos]
        except zipfile.BadZipFile:
            largest = []
        out.append({"file": wheel.name, "bytes": size, "mib": round(size / 2**20, 2), "limit_mib": limit_mib,
                    "within_limit": size <= limit_mib * 2**20, "largest_members": largest})
    return out


def model_file_sizes(model_dir: Path) -> list[dict[str, Any]]:
    """The exported files as model.json lists them (a folder counts as the sum of its files)."""
    manifest = records.read(model_dir / "model.json", records.ModelManifest)
    return [{"kind": kind, "path": entry.path, "bytes": entry.size} for kind, entry in manifest.files.items()]


def cache_path() -> Path:
    return services.state_dir() / "bench" / "layer-gzip-sizes.json"


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("gzip_level") != GZIP_LEVEL:
        return {}
    return data.get("layers", {})


def save_cache(path: Path, cache: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"gzip_level": GZIP_LEVEL, "layers": cache}, indent=1) + "\n")
    tmp.replace(path)
