"""Decoding face photos into the arrays the network sees."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from kinship import files
from kinship.errors import UserError
from kinship.files import open_regular

# Per-channel statistics used to normalise uint8 RGB into the network's input range.
# 0.5/0.5 maps [0, 255] to [-1, 1]: simple, and recorded in every exported model's metadata.
NORMALISE_MEAN = (0.5, 0.5, 0.5)
NORMALISE_STD = (0.5, 0.5, 0.5)


# Decoding a 25-megapixel photo takes 75 MB as RGB; a face crop is 224x224. Anything larger is refused before
# its pixels are decoded, so one hostile header (a "decompression bomb") costs a counted drop, not the memory.
MAX_PIXELS_ENV = "KINSHIP_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 25_000_000


# Formats a face photo comes in. Pillow knows dozens more (EPS runs Ghostscript, TIFF and PSD have long
# histories of decoder bugs); a data set gains nothing from them, so they are refused as unreadable.
DECODED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")


class UnreadableImage(Exception):
    """The file is not a decodable image (corrupt, truncated, not an image at all)."""

    reason = "corrupt or truncated image"


class OversizedImage(UnreadableImage):
    """The image's header declares more pixels than the limit (``max_image_pixels``): never decoded."""

    reason = "image over the pixel limit (KINSHIP_MAX_IMAGE_PIXELS)"


class NotRegularFile(UnreadableImage):
    """A symbolic link, fifo, device or socket where an image file was expected: never followed or read."""

    reason = "symbolic link or special file (not followed)"


def max_image_pixels(environ: Mapping[str, str] | None = None) -> int:
    """The pixel limit of every decode: ``KINSHIP_MAX_IMAGE_PIXELS`` or ``DEFAULT_MAX_PIXELS``.

    A value that is not a positive integer is a one-line ``UserError`` naming it.
    """
    text = (os.environ if environ is None else environ).get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{MAX_PIXELS_ENV}={text[:40]!r} is not a positive whole number of pixels")
    return value


def open_rgb(path: Path, max_pixels: int | None = None, follow_links: bool = False,
             root: Path | None = None) -> tuple[Image.Image, dict]:
    """Decode ``path`` fully and return it as RGB, with what had to be fixed on the way.

    The one place images are decoded. ``fixes`` may hold ``grayscale`` (converted from L/LA/P/...),
    ``format`` (the actual format when the bytes are not JPEG, e.g. a PNG named .jpg) and ``size`` (the
    original size). Raises ``OversizedImage`` when the header declares more than ``max_pixels`` (default
    ``max_image_pixels()``), before decoding; ``NotRegularFile`` for a symbolic link (unless
    ``follow_links``: a file the user named) or a fifo/device; ``UnreadableImage`` for corrupt or truncated files.

    ``root``: the data set folder ``path`` was listed under. The file is then reached from it folder by folder
    (``files.open_below``), so a listed folder swapped for a link to elsewhere since the listing is refused as a
    link, not followed: O_NOFOLLOW alone guards only the file's own name.
    """
    limit = max_pixels or max_image_pixels()
    try:
        with _open_regular(Path(path), follow_links, root) as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(handle, formats=DECODED_FORMATS) as image:
                if image.size[0] * image.size[1] > limit:
                    raise OversizedImage(f"{path}: {image.size[0]}x{image.size[1]} is over {limit} pixels")
                image.load()  # forces a full decode: truncated JPEGs fail here, not later
                fixes: dict = {"format": image.format, "size": image.size}
                if image.mode != "RGB":
                    if image.mode in ("L", "LA", "I", "I;16", "1") or (image.mode == "P" and _palette_is_gray(image)):
                        fixes["grayscale"] = True
                    image = image.convert("RGB")
                return image.copy(), fixes
    except Image.DecompressionBombError as error:  # Pillow's own ceiling, met before ours could look
        raise OversizedImage(f"{path}: {error}") from None
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError, EOFError) as error:
        raise UnreadableImage(f"{path}: {error}") from error


def _open_regular(path: Path, follow_links: bool, root: Path | None) -> BinaryIO:
    """``files.open_regular``, a refusal as ``NotRegularFile`` (a counted drop), any other failure as unreadable."""
    try:
        return open_regular(path, follow_links, root=root)
    except files.NotRegularFile:
        raise NotRegularFile(f"{path}: not a regular file (a symbolic link or special file)") from None
    except OSError as error:
        raise UnreadableImage(f"{path}: {error.strerror}") from None


def _palette_is_gray(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    triples = zip(palette[0::3], palette[1::3], palette[2::3])
    return all(r == g == b for r, g, b in triples)


def load_face(path: Path, size: int, max_pixels: int | None = None, root: Path | None = None) -> np.ndarray:
    """Decode ``path`` as a ``size``x``size``x3 uint8 RGB array (squashed to square like the Kaggle crops); with
    ``root``, reached from that data set folder through no link (``open_rgb``)."""
    image, _ = open_rgb(path, max_pixels, root=root)
    return _square(image, size)


def _square(image: Image.Image, size: int) -> np.ndarray:
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_face_for_user(path: Path, size: int) -> np.ndarray:
    """``load_face`` for a file a user named: a missing or unreadable file is a one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        image, _ = open_rgb(path, follow_links=True)  # a file the user named on the command line
    except OversizedImage as error:
        raise UserError(f"cannot read image {path}: {str(error).removeprefix(f'{path}: ')}") from None
    except UnreadableImage as error:
        raise UserError(f"cannot read image {path}: not a valid image file") from error
    return _square(image, size)


def to_network_input(batch_uint8: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> NCHW float32 normalised with ``NORMALISE_MEAN``/``NORMALISE_STD``."""
    mean = np.asarray(NORMALISE_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(NORMALISE_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    x = batch_uint8.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - mean) / std
