"""The ``mosaic`` style: textured ovals whose texture parameters are inherited by blending.

What it draws: each person is a head-like oval (width, height, chin taper and squareness are genes) filled
with procedural texture layers: a base colour with a gradient, stripes (angle, frequency, contrast,
sharpness), a jittered lattice of spots (spacing, size, regularity, strength), one or two horizontal bands
(positions, width, strength), value noise (weights of coarse/mid/fine octaves, amplitude) and a dark rim.
Colours come from a heritable palette of three colours, each as lightness and two opponent axes
(red-green, yellow-blue) so that mixing two genomes mixes the colours. A symmetry flag mirrors the
pattern about the vertical axis (stripes become chevrons). 33 genes, all in [0, 1].

Inheritance: blended. Every gene of a child is ``w * father + (1 - w) * mother`` with ``w`` drawn per gene
from U(0.25, 0.75), plus Gaussian mutation (sd 0.03), clipped to [0, 1]. Founders draw each gene from
Beta(0.6, 0.6): U-shaped, so strangers differ visibly.

Per person (not heritable): a small jitter on every gene, its own noise field, sex (males a little wider,
females a little taller and more tapered) and age (colours fade and desaturate, fine noise grows; young
children are rounder).

Nuisances, per photo and scaled by ``settings.nuisance``: rotation (up to +-20 degrees), scale (0.8-1.2),
shift (up to 10% of the side), a muted background (solid, gradient or clutter), a colour cast per channel,
gamma, brightness and contrast, sometimes Gaussian blur, sensor noise and JPEG quality 40-95. Nothing is
shared between photos of a person or of a family.

The oracle similarity is the cosine of the genes centred on 0.5: blending pulls children towards the
middle of every gene, so plain distance would call two unrelated children (both near the middle) closer
than a grandparent and grandchild; the cosine compares the direction of the deviations, not their size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kinship.synth_style import StyleSettings, encode_jpeg

GENES = (
    # shape
    "width", "height", "taper", "squareness",
    # palette: three colours as lightness, red-green and yellow-blue
    "a_light", "a_rg", "a_yb", "b_light", "b_rg", "b_yb", "c_light", "c_rg", "c_yb",
    # base gradient from colour A towards colour B
    "gradient_angle", "gradient_strength",
    # stripes in colour C
    "stripe_angle", "stripe_frequency", "stripe_contrast", "stripe_sharpness",
    # spots in a dark shade of colour B
    "spot_spacing", "spot_size", "spot_jitter", "spot_strength",
    # horizontal bands in a dark shade of colour C
    "band_1", "band_2", "band_width", "band_strength",
    # value noise: octave weights and amplitude
    "noise_coarse", "noise_mid", "noise_fine", "noise_amount",
    # pattern mirrored about the vertical axis when above 0.5; rim darkness
    "symmetry", "rim",
)
G = {name: index for index, name in enumerate(GENES)}

FOUNDER_BETA = 0.6  # Beta(0.6, 0.6): leans to the ends of each gene, so unrelated people differ visibly
MIX = (0.25, 0.75)  # per-gene weight of the father in a child's blend
MUTATION = 0.03  # sd of the Gaussian added to each inherited gene
PERSON_JITTER = 0.02  # sd of the non-heritable per-person offset of each gene
LATTICE = 32  # side of the style-wide table of spot offsets (the lattice repeats beyond it)
OCTAVES = (3, 6, 12)  # cells across the canvas of the coarse, mid and fine noise layers

# Opponent colour axes: lightness is grey, red-green and yellow-blue are offsets that sum to zero.
RED_GREEN = np.array([1.0, -0.8, -0.2], np.float32)
YELLOW_BLUE = np.array([0.45, 0.35, -0.8], np.float32)


def _colour(light: float, rg: float, yb: float, saturation: float) -> np.ndarray:
    """An RGB colour in [0, 1] from three genes: lightness 0.15-0.88 plus two opponent offsets."""
    grey = 0.15 + 0.73 * light
    rgb = grey + saturation * (0.42 * (rg - 0.5) * 2 * RED_GREEN + 0.42 * (yb - 0.5) * 2 * YELLOW_BLUE)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, smooth between: soft edges anti-alias without supersampling."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class Look:
    """One person's fixed appearance: genes after per-person, sex and age effects, plus their noise field.

    ``cache`` keeps the rendered subject per canvas size: every photo of a person is drawn from it, so the
    texture is computed once per person (it depends only on the fields above, so it stays deterministic).
    """

    genes: np.ndarray
    fade: float  # 0 = young adult colours; up to 0.6 for the oldest
    noise: list[np.ndarray]  # one grid per octave, values in [-1, 1]
    cache: dict = field(default_factory=dict)


@dataclass
class Shot:
    """Per-photo nuisance: drawn independently for every photo."""

    angle: float
    scale: float
    shift: tuple[float, float]
    cast: np.ndarray
    gamma: float
    brightness: float
    contrast: float
    blur: float  # in pixels at 64x64; 0 = sharp
    noise: float  # sd of sensor noise in 0-255 units
    quality: int


class MosaicStyle:
    """Textured ovals from 33 blended genes (see the module docstring)."""

    name = "mosaic"
    summary = ("textured oval: shape, 3-colour palette, stripes, spots, bands, noise octaves, symmetry (33 genes) / "
               "blended: per-gene random-weight mix of both parents + mutation / "
               "rotation, scale, shift, background, colour cast, gamma, blur, noise, JPEG quality")

    def __init__(self, settings: StyleSettings = StyleSettings()):
        self.settings = settings
        table = np.random.default_rng(np.random.SeedSequence([settings.seed, 0x6D6F73]))
        # Style-wide spot offsets per lattice cell: heritable spot layouts without storing positions in genes.
        self.lattice = table.uniform(-0.5, 0.5, (2, LATTICE, LATTICE)).astype(np.float32)

    # ------------------------------------------------------------------ genomes

    def founder(self, rng: np.random.Generator) -> np.ndarray:
        """33 genes from Beta(0.6, 0.6)."""
        return rng.beta(FOUNDER_BETA, FOUNDER_BETA, len(GENES))

    def child(self, rng: np.random.Generator, father: np.ndarray, mother: np.ndarray) -> np.ndarray:
        """Each gene a random-weight blend of the parents' (weight per gene), plus mutation."""
        weight = rng.uniform(MIX[0], MIX[1], len(GENES))
        genes = weight * father + (1 - weight) * mother
        return np.clip(genes + rng.normal(0.0, MUTATION, len(GENES)), 0.0, 1.0)

    def oracle_features(self, genome: np.ndarray) -> np.ndarray:
        """The genes themselves: everything heritable."""
        return np.asarray(genome, float).ravel()

    def oracle_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise cosine of the genes centred on 0.5."""
        # Cosine of the deviations from the middle: blended children shrink towards 0.5, so their
        # direction, not their distance, says whose they are.
        a = np.asarray(a, float) - 0.5
        b = np.asarray(b, float) - 0.5
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)

    # ------------------------------------------------------------------ people

    def appearance(self, genome: np.ndarray, sex: str, age: int, rng: np.random.Generator) -> Look:
        """Genes plus a per-person jitter, sex and age effects, and the person's own noise field."""
        genes = np.clip(np.asarray(genome, float) + rng.normal(0.0, PERSON_JITTER, len(GENES)), 0.0, 1.0)
        # Sex shifts the shape a little: a family resemblance must survive it.
        if sex == "m":
            genes[G["width"]] = min(1.0, genes[G["width"]] + 0.08)
            genes[G["taper"]] = max(0.0, genes[G["taper"]] - 0.08)
        else:
            genes[G["height"]] = min(1.0, genes[G["height"]] + 0.08)
            genes[G["taper"]] = min(1.0, genes[G["taper"]] + 0.08)
        if age < 12:  # young children: rounder, shorter heads
            genes[G["height"]] *= 0.8
            genes[G["squareness"]] *= 0.8
        noise = [rng.uniform(-1.0, 1.0, (n + 1, n + 1)).astype(np.float32) for n in OCTAVES]
        return Look(genes=genes, fade=float(np.clip((age - 30) / 75, 0.0, 0.6)), noise=noise)

    def photo(self, appearance: Look, rng: np.random.Generator, size: int) -> bytes:
        """Pose the person's texture over a fresh background, then blur, develop and JPEG-encode."""
        k = self.settings.nuisance
        shot = _shot(rng, k)
        rgb, mask = self._subject(appearance, size)
        matrix = _pose_matrix(shot, size, rgb.size[0])
        rgb = rgb.transform((size, size), Image.AFFINE, matrix, resample=Image.BILINEAR)
        mask = mask.transform((size, size), Image.AFFINE, matrix, resample=Image.BILINEAR)
        image = Image.composite(rgb, _background(rng, size, k), mask)
        if shot.blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(shot.blur * size / 64))
        return encode_jpeg(_develop(image, shot, rng), shot.quality)

    # ------------------------------------------------------------------ rendering

    def _subject(self, look: Look, size: int) -> tuple[Image.Image, Image.Image]:
        """The person's texture (RGB) and oval (L mask), drawn once per canvas size and reused."""
        if size not in look.cache:
            # 1.5x the photo side: the pose transform then downsamples, which smooths the finest texture.
            look.cache[size] = self._render(look, int(size * 1.5))
        return look.cache[size]

    def _render(self, look: Look, canvas: int) -> tuple[Image.Image, Image.Image]:
        """Evaluate every texture layer on a ``canvas`` grid of head coordinates in [-1, 1]."""
        g = look.genes.tolist()  # Python floats: NumPy 2 would promote float32 arrays to float64 with np.float64
        axis = np.linspace(-1.0, 1.0, canvas, dtype=np.float32)
        x, y = axis[None, :], axis[:, None]
        mask, edge = _oval(g, x, y, canvas)
        # The symmetry flag is a threshold: the texture is either mirrored or not, as a visible trait.
        px = np.abs(x) if g[G["symmetry"]] > 0.5 else x
        px, py = np.broadcast_to(px, (canvas, canvas)), np.broadcast_to(y, (canvas, canvas))
        saturation = 1.0 - 0.8 * look.fade  # old age desaturates
        a = _colour(g[G["a_light"]], g[G["a_rg"]], g[G["a_yb"]], saturation)
        b = _colour(g[G["b_light"]], g[G["b_rg"]], g[G["b_yb"]], saturation)
        c = _colour(g[G["c_light"]], g[G["c_rg"]], g[G["c_yb"]], saturation)
        image = _gradient(g, a, b, px, py)
        image = _mix(image, c, _stripes(g, px, py))
        image = _mix(image, b * 0.45, self._spots(g, px, py, canvas))
        image = _mix(image, c * 0.4, _bands(g, py))
        image *= 1.0 + _noise(look, g, canvas)[..., None]
        # Fading: colours drift towards mid-grey with age, as if the photo (and person) were older.
        image = image * (1 - 0.5 * look.fade) + 0.5 * (0.5 * look.fade)
        image *= (1.0 - (0.15 + 0.5 * g[G["rim"]]) * edge)[..., None]  # a dark rim outlines the head
        # The texture covers the whole canvas, not only the oval: bilinear posing of the RGB image then
        # blends edge pixels with texture, never with black, so the mask's soft edge shows no dark fringe.
        rgb = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(rgb, "RGB"), Image.fromarray((mask * 255 + 0.5).astype(np.uint8), "L")

    def _spots(self, g: list[float], px: np.ndarray, py: np.ndarray, canvas: int) -> np.ndarray:
        """A lattice of round spots; per-cell offsets come from the style-wide table, scaled by a gene."""
        spacing = 0.22 + 0.35 * g[G["spot_spacing"]]
        # A cell boundary on the vertical axis: mirrored patterns then do not cut a spot in half there.
        u, v = px / spacing, py / spacing
        i, j = np.floor(u), np.floor(v)
        ii, jj = i.astype(np.int64) % LATTICE, j.astype(np.int64) % LATTICE
        jitter = 0.8 * g[G["spot_jitter"]]
        cx = i + 0.5 + jitter * self.lattice[0][jj, ii] * 0.6
        cy = j + 0.5 + jitter * self.lattice[1][jj, ii] * 0.6
        distance = np.hypot(u - cx, v - cy)
        radius = 0.12 + 0.3 * g[G["spot_size"]]
        softness = 2.0 / (canvas * spacing / 2)  # about one pixel, in lattice units
        return (1 - _smoothstep(radius - softness, radius + softness, distance)) * (0.15 + 0.85 * g[G["spot_strength"]])


def _oval(g: list[float], x: np.ndarray, y: np.ndarray, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """The head: a superellipse that narrows towards the chin. Returns its soft mask and a rim weight."""
    half_width = 0.42 + 0.22 * g[G["width"]]
    half_height = 0.58 + 0.22 * g[G["height"]]
    power = 2.0 + 2.5 * g[G["squareness"]]
    # Taper: narrower below the middle (a chin), wider above; y grows downwards.
    width_at = half_width * (1.0 - (0.05 + 0.35 * g[G["taper"]]) * np.clip(y / half_height, 0.0, 1.0))
    r = (np.abs(x / width_at) ** power + np.abs(y / half_height) ** power) ** (1.0 / power)
    pixel = 2.0 / canvas / min(half_width, half_height)
    mask = 1.0 - _smoothstep(1.0 - pixel, 1.0 + pixel, r)
    edge = _smoothstep(0.8, 1.0, r)
    return mask, edge


def _gradient(g: list[float], a: np.ndarray, b: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Base colour A shading towards B along a heritable direction."""
    angle = np.pi * 0.9 * g[G["gradient_angle"]]
    ramp = np.clip(0.5 + 0.5 * (math.cos(angle) * px + math.sin(angle) * py), 0.0, 1.0)
    t = (ramp * (0.15 + 0.8 * g[G["gradient_strength"]]))[..., None]
    return a * (1 - t) + b * t


def _stripes(g: list[float], px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Weight of the stripe colour: a sine along a heritable direction, sharpened towards a square wave."""
    angle = np.pi * 0.9 * g[G["stripe_angle"]]
    frequency = 1.2 + 3.8 * g[G["stripe_frequency"]]  # cycles across the head: visible at 64 px
    wave = np.sin(math.pi * frequency * (math.cos(angle) * px + math.sin(angle) * py))
    sharp = 1.0 + 6.0 * g[G["stripe_sharpness"]]
    wave = np.tanh(sharp * wave) / math.tanh(sharp)
    return (0.5 + 0.5 * wave) * (0.1 + 0.8 * g[G["stripe_contrast"]])


def _bands(g: list[float], py: np.ndarray) -> np.ndarray:
    """Weight of two horizontal bands (like an eye mask and a collar) at heritable heights."""
    width = 0.05 + 0.15 * g[G["band_width"]]
    first = np.exp(-(((py - (-0.6 + 0.6 * g[G["band_1"]])) / width) ** 2))
    second = np.exp(-(((py - (0.05 + 0.6 * g[G["band_2"]])) / width) ** 2))
    return np.maximum(first, 0.6 * second) * (0.1 + 0.75 * g[G["band_strength"]])


def _noise(look: Look, g: list[float], canvas: int) -> np.ndarray:
    """Brightness modulation: the person's own noise octaves, weighted by heritable octave genes."""
    weights = np.array([g[G["noise_coarse"]], g[G["noise_mid"]], g[G["noise_fine"]]], np.float32)
    weights = weights / (weights.sum() + 1e-6)
    total = np.zeros((canvas, canvas), np.float32)
    for weight, grid in zip(weights, look.noise):
        # Bicubic upsampling of a small random grid is value noise at C speed.
        layer = Image.fromarray(grid, "F").resize((canvas, canvas), Image.BICUBIC)
        total += weight * np.asarray(layer, np.float32)
    amount = 0.05 + 0.3 * g[G["noise_amount"]] + 0.15 * look.fade  # age adds fine texture
    return np.clip(total, -1.0, 1.0) * amount


def _mix(image: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Lay ``colour`` over ``image`` with per-pixel opacity ``weight``."""
    w = weight[..., None].astype(np.float32)
    return image * (1 - w) + colour * w


# ---------------------------------------------------------------------- per-photo nuisance


def _shot(rng: np.random.Generator, k: float) -> Shot:
    """Draw one photo's nuisance; ``k`` scales every spread (0 = identical studio photos)."""
    quality_low = 95 - 55 * min(k, 1.0)
    return Shot(
        angle=float(np.clip(rng.normal(0, 9), -20, 20) * k),
        scale=float(np.clip(1.0 + rng.uniform(-0.2, 0.2) * k, 0.5, 1.6)),
        shift=(float(rng.uniform(-0.1, 0.1) * k), float(rng.uniform(-0.1, 0.1) * k)),
        cast=(1.0 + rng.normal(0, 0.05, 3) * k).astype(np.float32),
        gamma=float(np.exp(rng.normal(0, 0.14) * k)),
        brightness=float(1.0 + rng.normal(0, 0.1) * k),
        contrast=float(np.clip(1.0 + rng.normal(0, 0.12) * k, 0.4, 1.8)),
        blur=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.25 * min(k, 2.0) else 0.0,
        noise=float(rng.uniform(0, 7) * k),
        quality=int(rng.integers(int(quality_low), 96)),
    )


def _pose_matrix(shot: Shot, size: int, canvas: int) -> tuple[float, ...]:
    """PIL's inverse affine map: output pixel -> subject pixel, rotating and scaling about the centre."""
    c_out, c_in = size / 2, canvas / 2
    # At scale 1 the canvas spans 1.15 photo sides, so the head fills about 65-90% of the photo's height.
    zoom = canvas / (size * 1.15) / shot.scale
    angle = np.radians(shot.angle)
    cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
    tx, ty = c_out + shot.shift[0] * size, c_out + shot.shift[1] * size
    return (cos, sin, c_in - cos * tx - sin * ty, -sin, cos, c_in + sin * tx - cos * ty)


def _muted(rng: np.random.Generator, k: float) -> np.ndarray:
    """A background colour: grey around the middle, lightly tinted, so it does not outweigh the head."""
    return 128 + rng.normal(0, 15) * min(k, 1.5) + rng.normal(0, 7, 3) * k


def _background(rng: np.random.Generator, size: int, k: float) -> Image.Image:
    """A solid wall, a gradient or low-contrast clutter: chosen and coloured per photo."""
    kind = int(rng.integers(0, 3))
    wall = _muted(rng, k)
    if kind == 0:
        return Image.new("RGB", (size, size), _rgb(wall))
    if kind == 1:
        wall, other = wall.astype(np.float32), _muted(rng, k).astype(np.float32)
        angle = float(rng.uniform(0, 2 * math.pi))
        axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
        ramp = np.clip(math.cos(angle) * axis[None, :] + math.sin(angle) * axis[:, None] + 0.5, 0, 1)[..., None]
        return Image.fromarray(np.clip(wall * (1 - ramp) + other * ramp + 0.5, 0, 255).astype(np.uint8), "RGB")
    image = Image.new("RGB", (size, size), _rgb(wall))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.1, 0.6, 2) * size
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([x0, y0, x0 + w, y0 + h], fill=_rgb(wall + rng.normal(0, 16, 3) * k))
    return image


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(colour), 0, 255))


def _develop(image: Image.Image, shot: Shot, rng: np.random.Generator) -> Image.Image:
    """Camera response: contrast, brightness, gamma and colour cast, then luminance sensor noise."""
    # The tone curve is per channel and pixel-independent: a 256-entry table applied by PIL costs
    # far less than a per-pixel power.
    level = np.arange(256, dtype=np.float64) / 255.0
    curve = np.clip(((level - 0.5) * shot.contrast + 0.5) * shot.brightness, 0.0, 1.0) ** shot.gamma
    table = np.clip(curve[None, :] * shot.cast[:, None].astype(np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = image.point(table.ravel().tolist())
    if shot.noise <= 0:
        return image
    pixels = np.asarray(image, dtype=np.float32)
    size = pixels.shape[0]
    pixels = pixels + rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(shot.noise)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


STYLE = MosaicStyle
