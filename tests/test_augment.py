"""Training augmentation: seeded, shape-preserving, mild, and a no-op when switched off."""

from __future__ import annotations

import numpy as np
import pytest

from kinship.augment import AugmentConfig, augment


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (16, 3, 12, 12)).astype(np.float32)


def test_switched_off_returns_an_equal_copy(batch):
    out = augment(batch, np.random.default_rng(1), AugmentConfig(flip=False))
    assert out is not batch and np.array_equal(out, batch)


def test_same_seed_same_result_and_input_untouched(batch):
    config = AugmentConfig(flip=True, shift=3, jitter=0.2)
    before = batch.copy()
    a = augment(batch, np.random.default_rng(7), config)
    b = augment(batch, np.random.default_rng(7), config)
    assert np.array_equal(a, b) and np.array_equal(batch, before)
    assert a.shape == batch.shape and a.dtype == np.float32
    assert not np.array_equal(a, augment(batch, np.random.default_rng(8), config))


def test_shift_moves_pixels_by_at_most_the_limit():
    image = np.zeros((64, 1, 9, 9), np.float32)
    image[:, :, 4, 4] = 1.0  # one bright pixel in the middle
    out = augment(image, np.random.default_rng(0), AugmentConfig(flip=False, shift=2))
    rows, cols = np.nonzero(out[:, 0].max(axis=0))
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    moved = [tuple(np.argwhere(o[0] == 1.0)[0]) for o in out]
    assert len(set(moved)) > 5  # different photos move differently
    assert all(o.sum() == 1.0 for o in out)  # the pixel is moved, not duplicated or lost


def test_jitter_stays_within_its_bounds(batch):
    out = augment(batch, np.random.default_rng(0), AugmentConfig(flip=False, jitter=0.1))
    # x * (1 + c) + b with |c|, |b| <= 0.1 and |x| <= 1
    assert np.abs(out - batch).max() <= 0.2 + 1e-6
    assert np.abs(out - batch).max() > 0.01


def test_flip_mirrors_about_half_the_photos(batch):
    out = augment(batch, np.random.default_rng(0), AugmentConfig(flip=True))
    mirrored = sum(np.array_equal(o, b[:, :, ::-1]) for o, b in zip(out, batch))
    kept = sum(np.array_equal(o, b) for o, b in zip(out, batch))
    assert mirrored + kept == len(batch) and 3 <= mirrored <= 13
