"""Decoding face photos into the arrays the network sees."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kinship.errors import UserError

# Per-channel statistics used to normalise uint8 RGB into the network's input range.
# 0.5/0.5 maps [0, 255] to [-1, 1]: simple, and recorded in every exported model's metadata.
NORMALISE_MEAN = (0.5, 0.5, 0.5)
NORMALISE_STD = (0.5, 0.5, 0.5)


class UnreadableImage(Exception):
    """The file is not a decodable image (corrupt, truncated, not an image at all)."""


def open_rgb(path: Path) -> tuple[Image.Image, dict]:
    """Decode ``path`` fully and return it as RGB, with what had to be fixed on the way.

    ``fixes`` may hold ``grayscale`` (converted from L/LA/P/...), ``format`` (the actual format when
    the bytes are not JPEG, e.g. a PNG named .jpg) and ``size`` (the original size).
    Raises ``UnreadableImage`` for corrupt or truncated files.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.load()  # forces a full decode: truncated JPEGs fail here, not later
                fixes: dict = {"format": image.format, "size": image.size}
                if image.mode != "RGB":
                    if image.mode in ("L", "LA", "I", "I;16", "1") or (image.mode == "P" and _palette_is_gray(image)):
                        fixes["grayscale"] = True
                    image = image.convert("RGB")
                return image.copy(), fixes
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImage(f"{path}: {error}") from error


def _palette_is_gray(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    triples = zip(palette[0::3], palette[1::3], palette[2::3])
    return all(r == g == b for r, g, b in triples)


def load_face(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` as a ``size``x``size``x3 uint8 RGB array (squashed to square like the Kaggle crops)."""
    image, _ = open_rgb(path)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_face_for_user(path: Path, size: int) -> np.ndarray:
    """``load_face`` for a file a user named: a missing or unreadable file is a one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        return load_face(path, size)
    except UnreadableImage as error:
        raise UserError(f"cannot read image {path}: not a valid image file") from error


def to_network_input(batch_uint8: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> NCHW float32 normalised with ``NORMALISE_MEAN``/``NORMALISE_STD``."""
    mean = np.asarray(NORMALISE_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(NORMALISE_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    x = batch_uint8.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - mean) / std
