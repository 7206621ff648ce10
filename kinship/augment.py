"""Training-time augmentation of normalised NCHW batches: the nuisances of real photo collections.

Flips, shifts, brightness and contrast keep the encoder from memorising a photo's exact pixels (about
1,000 training people overfit within a few epochs without them). The rest (rotation and zoom, colour
cast, blur, sensor noise, occluding patches) are the nuisances that differ from one photo collection to
the next: a model that has only seen one renderer's or one camera's nuisance learns that source instead
of kinship, so training varies each of them beyond what the training set shows (see the transfer
benchmark in the README).

Random numbers come from one numpy generator, so a batch is reproducible for a seed (exact resume);
torch is imported only when rotation, zoom or blur are on, so the configuration imports without it.
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
    rotate: float = 0.0  # largest rotation in degrees
    zoom: float = 0.0  # largest relative change of scale
    colour: float = 0.0  # largest relative gain per colour channel (a colour cast)
    blur: float = 0.0  # share of photos blurred (Gaussian, sigma 0.5-1.5 px at 64 px)
    noise: float = 0.0  # largest standard deviation of added sensor noise (input units, range about 2)
    erase: float = 0.0  # share of photos with one random rectangle painted over (occlusion)

    @property
    def active(self) -> bool:
        return self.flip or self.shift > 0 or self.jitter > 0 or self.photometric_or_geometric

    @property
    def photometric_or_geometric(self) -> bool:
        return any(v > 0 for v in (self.rotate, self.zoom, self.colour, self.blur, self.noise, self.erase))


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
    if config.photometric_or_geometric:
        out = _nuisances(out, rng, config)
    return out


def _nuisances(out: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    count = len(out)
    if config.rotate > 0 or config.zoom > 0:
        out = _rotate_and_zoom(out, rng.uniform(-config.rotate, config.rotate, count),
                               np.exp(rng.uniform(-config.zoom, config.zoom, count)))
    if config.colour > 0:
        out = out * (1.0 + rng.uniform(-config.colour, config.colour, (count, 3, 1, 1))).astype(np.float32)
    if config.blur > 0:
        chosen = rng.random(count) < config.blur
        sigmas = rng.uniform(0.5, 1.5, count) * out.shape[-1] / 64
        if chosen.any():
            out[chosen] = _gaussian_blur(out[chosen], sigmas[chosen])
    if config.noise > 0:
        levels = rng.uniform(0, config.noise, (count, 1, 1, 1)).astype(np.float32)
        out = out + levels * rng.standard_normal(out.shape, dtype=np.float32)
    if config.erase > 0:
        _erase(out, rng, rng.random(count) < config.erase)
    return out


def _rotate_and_zoom(batch: np.ndarray, degrees: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Rotate and scale each image about its centre (bilinear, edges repeated)."""
    import torch
    import torch.nn.functional as F

    angle = np.radians(degrees)
    cos, sin = np.cos(angle) / scales, np.sin(angle) / scales
    theta = np.stack([np.stack([cos, -sin, np.zeros_like(cos)], 1), np.stack([sin, cos, np.zeros_like(cos)], 1)], 1)
    images = torch.from_numpy(np.ascontiguousarray(batch))
    grid = F.affine_grid(torch.from_numpy(theta.astype(np.float32)), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()


def _gaussian_blur(batch: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Blur each image with its own sigma (separable 7-tap kernels, one grouped convolution per axis)."""
    import torch
    import torch.nn.functional as F

    count, channels = batch.shape[:2]
    taps = np.arange(-3, 4, dtype=np.float32)
    kernels = np.exp(-(taps[None, :] ** 2) / (2 * sigmas[:, None] ** 2)).astype(np.float32)
    kernels /= kernels.sum(1, keepdims=True)
    weight = torch.from_numpy(np.repeat(kernels, channels, axis=0))  # [count*channels, 7]
    images = torch.from_numpy(np.ascontiguousarray(batch)).reshape(1, count * channels, *batch.shape[2:])
    images = F.conv2d(F.pad(images, (3, 3, 0, 0), mode="replicate"), weight[:, None, None, :], groups=count * channels)
    images = F.conv2d(F.pad(images, (0, 0, 3, 3), mode="replicate"), weight[:, None, :, None], groups=count * channels)
    return images.reshape(batch.shape).numpy()


def _erase(batch: np.ndarray, rng: np.random.Generator, chosen: np.ndarray) -> None:
    """Paint one rectangle (10-40% of each side) of a flat random colour over each chosen image, in place."""
    height, width = batch.shape[2:]
    for index in np.flatnonzero(chosen):
        h, w = (rng.uniform(0.1, 0.4, 2) * (height, width)).astype(int) + 1
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        batch[index, :, top : top + h, left : left + w] = rng.uniform(-1, 1, (3, 1, 1))


def _shift(batch: np.ndarray, rng: np.random.Generator, shift: int) -> np.ndarray:
    """Translate each image by up to ``shift`` pixels per axis, repeating the border."""
    count, _, height, width = batch.shape
    padded = np.pad(batch, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="edge")
    rows, cols = rng.integers(0, 2 * shift + 1, (2, count))
    return np.stack([padded[i, :, rows[i] : rows[i] + height, cols[i] : cols[i] + width] for i in range(count)])
