"""Training-time augmentation of normalised NCHW batches: flips, small shifts, brightness and contrast.

Faces in the data sets are aligned crops, so only mild changes keep them plausible; what they buy is that
the encoder cannot memorise a photo's exact pixels (about 1,000 training people overfit within a few
epochs without them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """How much each photo of a training batch may change; all zero = the photo as stored."""

    flip: bool = True  # faces are near-symmetric
    shift: int = 0  # largest translation in pixels, each axis (edges are repeated)
    jitter: float = 0.0  # largest relative change of brightness and of contrast

    @property
    def active(self) -> bool:
        return self.flip or self.shift > 0 or self.jitter > 0


def augment(batch: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """A randomly changed copy of ``batch`` (N, C, H, W float, normalised to about [-1, 1])."""
    out = np.array(batch, dtype=np.float32, copy=True)
    count = len(out)
    if config.flip:
        flipped = rng.random(count) < 0.5
        out[flipped] = out[flipped, :, :, ::-1]
    if config.shift > 0:
        out = _shift(out, rng, config.shift)
    if config.jitter > 0:
        contrast = 1.0 + rng.uniform(-config.jitter, config.jitter, (count, 1, 1, 1)).astype(np.float32)
        brightness = rng.uniform(-config.jitter, config.jitter, (count, 1, 1, 1)).astype(np.float32)
        out = out * contrast + brightness
    return out


def _shift(batch: np.ndarray, rng: np.random.Generator, shift: int) -> np.ndarray:
    """Translate each image by up to ``shift`` pixels per axis, repeating the border."""
    count, _, height, width = batch.shape
    padded = np.pad(batch, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="edge")
    rows, cols = rng.integers(0, 2 * shift + 1, (2, count))
    return np.stack([padded[i, :, rows[i] : rows[i] + height, cols[i] : cols[i] + width] for i in range(count)])
