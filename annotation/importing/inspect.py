"""Open and verify one candidate cell image before anything is stored."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif"}


@dataclass(frozen=True)
class InspectedImage:
    sha256: str
    width: int
    height: int
    extension: str


class ImageRejected(Exception):
    """The file is not a usable single-cell image; the message says why."""


def inspect_image_bytes(
    data: bytes, *, max_side: int, min_side: int, max_bytes: int
) -> InspectedImage:
    if len(data) > max_bytes:
        raise ImageRejected(f"file is {len(data)} bytes, over the per-image limit of {max_bytes}")
    if not data:
        raise ImageRejected("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                width, height = im.size
                if fmt not in ALLOWED_FORMATS:
                    raise ImageRejected(
                        f"{fmt or 'unknown'} images are not accepted; use "
                        f"{', '.join(ALLOWED_FORMATS)}"
                    )
                # Size is known from the header: refuse overviews and bombs before decoding.
                if max(width, height) > max_side:
                    raise ImageRejected(
                        f"not a single-cell crop ({width}x{height} px; cell images are at "
                        f"most {max_side} px a side, e.g. the analyser's 360x363 crops; "
                        "slide overviews are not imported)"
                    )
                if min(width, height) < min_side:
                    raise ImageRejected(
                        f"too small for a cell image ({width}x{height} px; at least "
                        f"{min_side} px a side)"
                    )
                im.load()  # full decode: finds truncated and corrupt data
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image (no known image format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt image ({exc})") from None
    return InspectedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        extension=ALLOWED_FORMATS[fmt],
    )
