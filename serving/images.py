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


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The decoded image, RGB, pixels loaded; numpy-free so the tfserving-client image needs no numpy."""
    if not data:
        raise ImageRejected(400, "empty_body", "the request carried no image bytes")
    # A truncated file must be an error, never a silently half-grey image.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (a warning turned into an error, or its hard limit) fired first.
        raise ImageRejected(413, "image_too_large", f"image dimensions exceed the limit: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected(
            400,
            "not_an_image",
            f"the body is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})",
        ) from None
    except Exception as exc:  # any decoder failure on untrusted bytes is a bad request, not a server fault
        raise ImageRejected(400, "invalid_image", f"the image header cannot be read: {exc}") from None
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageRejected(400, "invalid_image", f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageRejected(
                413,
                "image_too_large",
                f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            )
        try:
            image.load()
            rgb = image.convert("RGB")
        except MemoryError:
            raise ImageRejected(413, "image_too_large", "the image does not fit in memory") from None
        except Exception as exc:  # truncated or corrupt pixel data
            raise ImageRejected(
                400, "invalid_image", f"the image data is truncated or corrupt: {exc}"
            ) from None
    return rgb


def to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as the contract's uint8 HWC array."""
    import numpy as np

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageRejected(400, "invalid_image", f"decoded to an unexpected shape {array.shape}")
    return np.ascontiguousarray(array)
