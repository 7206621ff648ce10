"""What a synthetic-family generator ("style") provides, so that several can share one pedigree and writer.

A style decides three things and nothing else: how heritable traits are drawn (``founder``), how a
child inherits them (``child``), and how a person with those traits is photographed, nuisance included
(``appearance`` once per person, ``photo`` once per photo). ``kinship.synth`` builds the families,
relationships, file layout and test pairs the same way for every style, so styles differ in *kind*
(traits, inheritance rule, nuisances) and the transfer benchmark compares like with like.

The genome is a ``numpy`` array of any shape; ``oracle_features`` flattens what is heritable so the
benchmark can score how much kin signal the data holds (an AUC computed from the generator's own truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class StyleSettings:
    """What every style is built with: the data set's seed (for style-wide fixed tables) and nuisance scale."""

    seed: int = 0
    nuisance: float = 1.0  # 0 = studio photos, 1 = the style's default variation, up to 3
    mutation: float = 0.015  # the faces style's per-trait mutation; other styles keep their own rules


class Style(Protocol):
    """A synthetic generator. Implementations take ``StyleSettings`` in their constructor."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: traits / inheritance / nuisances

    def founder(self, rng: np.random.Generator) -> np.ndarray:
        """The genome of a person unrelated to everyone drawn before."""

    def child(self, rng: np.random.Generator, father: np.ndarray, mother: np.ndarray) -> np.ndarray:
        """A child's genome from its parents' genomes (the style's inheritance rule, mutation included)."""

    def appearance(self, genome: np.ndarray, sex: str, age: int, rng: np.random.Generator) -> Any:
        """What stays fixed across one person's photos (may add non-heritable per-person traits from ``rng``)."""

    def photo(self, appearance: Any, rng: np.random.Generator, size: int) -> bytes:
        """One ``size`` x ``size`` JPEG of the person; every per-photo nuisance comes from ``rng``."""

    def oracle_features(self, genome: np.ndarray) -> np.ndarray:
        """A 1-D float vector of the heritable state, for ``oracle_similarity``."""

    def oracle_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise similarity of two ``[N, F]`` stacks of ``oracle_features`` (higher = more alike)."""


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Deterministic JPEG bytes of an RGB image (fixed encoder settings: same pixels, same bytes)."""
    buffer = BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=int(quality), subsampling=2, optimize=False, progressive=False)
    return buffer.getvalue()


def negative_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The default oracle similarity: minus the Euclidean distance between heritable vectors."""
    return -np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=1)
