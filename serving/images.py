"""Turning untrusted request bytes into an RGB image (then a uint8 HWC array), or a client error.

Every failure here is the client's: the bytes are not an image we read, are truncated, or
describe more pixels than we agree to allocate. The dimensions are checked from the header,
before any pixel data is decoded, so a small file claiming 20000x20000 costs nothing.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, UnidentifiedImageError

if TYPE_CHECKING:
    import numpy as np

# Formats a client may send; restricting Image.open keeps exotic, less-hardened decoders out of reach.
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")
SUPPORTED_CONTENT_TYPES = frozenset(
    {
        "image/jpeg",
        "image/jpg",
        "image/png",
        "image/bmp",
        "image/x-ms-bmp",
        "image/webp",
        "image/gif",
        "image/tiff",
    }
)


class ImageRejected(Exception):
    """The request's image cannot be served; ``status`` is the HTTP status, ``code`` a stable error code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _short(exc: Exception) -> str:
    """A decoder's own words, one line and bounded: enough to tell what is wrong, nothing more."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class Probe:
    """An image opened from its header, not decoded: its size, and the size it will be decoded at.

    A JPEG larger than ``draft_to`` is decoded at a reduced scale (1/2, 1/4 or 1/8, by libjpeg's
    DCT scaling) that still covers ``draft_to``: a 12 MP photo for a 128x128 model then costs
    a few hundred kilobytes instead of 48 MB. ``scale`` maps boxes back to the original pixels.
    """

    def __init__(self, image: Image.Image, width: int, height: int):
        self.image = image
        self.width = width
        self.height = height

    @property
    def decoded_size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def scale(self) -> tuple[float, float]:
        w, h = self.image.size
        return self.width / w, self.height / h

    @property
    def mode(self) -> str:
        return self.image.mode

    def close(self) -> None:
        self.image.close()


def probe_image(data: bytes, *, max_pixels: int, draft_to: tuple[int, int] | None = None) -> Probe:
    """Open ``data``, check its dimensions from the header, and choose the JPEG draft scale."""
    if not data:
        raise ImageRejected(400, "empty_body", "the request carried no image bytes")
    # A truncated file must be an error, never a silently half-grey image.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (a warning turned into an error, or its hard limit) fired first.
        raise ImageRejected(
            413, "image_too_large", f"the image has more pixels than the limit of {max_pixels}"
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            400,
            "not_an_image",
            f"the body is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})",
        ) from None
    except Exception as exc:  # any decoder failure on untrusted bytes is a bad request, not a server fault
        raise ImageRejected(400, "invalid_image", f"the image header cannot be read: {_short(exc)}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise ImageRejected(400, "invalid_image", f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        image.close()
        raise ImageRejected(
            413,
            "image_too_large",
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    if draft_to is not None and image.format == "JPEG" and (width > draft_to[0] and height > draft_to[1]):
        try:
            image.draft("RGB", draft_to)
        except Exception as exc:
            image.close()
            raise ImageRejected(400, "invalid_image", f"the JPEG cannot be decoded: {_short(exc)}") from None
    return Probe(image, width, height)


def load_image(probe: Probe) -> Image.Image:
    """Decode a probed image to RGB, pixels loaded; the probe's image is closed."""
    image = probe.image
    try:
        image.load()
        if image.mode == "RGB":
            return image
        rgb = image.convert("RGB")
        image.close()
        return rgb
    except MemoryError:
        image.close()
        raise ImageRejected(413, "image_too_large", "the image does not fit in memory") from None
    except ImageRejected:
        image.close()
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        image.close()
        raise ImageRejected(400, "invalid_image", f"the image data is truncated or corrupt: {_short(exc)}") from None


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The decoded image, RGB, pixels loaded, at full size; numpy-free so the tfserving-client image
    needs no numpy."""
    return load_image(probe_image(data, max_pixels=max_pixels))


# A large image is copied into its array in bands of about this many bytes: Pillow's tobytes()
# would first build the whole image as bytes (a second full copy, joined while holding the GIL,
# which stalls the event loop for tens of milliseconds on a 36 MP image).
BAND_BYTES = 4 * 1024 * 1024


def to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as the contract's uint8 HWC array."""
    import numpy as np

    width, height = image.size
    if image.mode != "RGB" or width * height * 3 <= BAND_BYTES:
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ImageRejected(400, "invalid_image", f"decoded to an unexpected shape {array.shape}")
        return np.ascontiguousarray(array)
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, BAND_BYTES // (width * 3))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = image.crop((0, top, width, bottom))
        out[top:bottom] = np.frombuffer(band.tobytes(), dtype=np.uint8).reshape(bottom - top, width, 3)
        band.close()
    return out
