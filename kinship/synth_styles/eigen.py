"""The ``eigen`` style: faces as a mean image plus abstract heritable components, like eigenfaces.

What it draws. A fixed mean face (soft blobs: head, hair, eyes, brows, nose, mouth, shoulders on a grey
backdrop) plus a weighted sum of smooth random basis images. The style's seed fixes the tables: 30 colour
components (each a few random Gaussian bumps of colour, most on the face) and 10 warp components
(smooth displacement fields that move or stretch a region: eye spacing, jaw, nose...). A person's
phenotype is one coefficient per component, so the photo is ``mean + sum_k p_k * basis_k``, then warped by
``sum_k p_k * warp_k``. Nothing is named: the traits are directions in image space.

Inheritance. Diploid and Mendelian per component: the genome holds two alleles for each of the 40
components (shape ``(2, 40)``), founders' alleles ~ N(0, 1), the phenotype is the mean of the two. A child
takes, for every component independently, one allele chosen at random from the father and one from the
mother; each allele mutates (is redrawn from the founder distribution) with probability 0.02.

Per person, not heritable: a separate set of "individual" colour and warp components, a fixed sex
component (jaw, beard shadow, lips) and age (fine lines and greying hair with age, a rounder and smoother
face in children).

Nuisance, drawn anew for every photo and scaled by ``StyleSettings.nuisance`` (0 = none): a few
"expression" components from another non-heritable basis, shift, scale and a small tilt, an illumination
gradient, brightness, colour cast and gamma, a backdrop tint, an occluder in about 30% of photos
(sunglasses, a hand, a hat, or a bar), blur, sensor noise and JPEG quality 40-95.

All bases are built analytically on a [-1, 1] grid, so they look the same at every size; each size's
tables are built once and cached. Only numpy and Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from kinship.synth_style import StyleSettings, encode_jpeg

HERITABLE_COLOUR = 30  # colour components of the genome
HERITABLE_WARP = 10  # warp components of the genome
COMPONENTS = HERITABLE_COLOUR + HERITABLE_WARP
INDIVIDUAL_COLOUR, INDIVIDUAL_WARP = 6, 2  # per person, not heritable
EXPRESSION_COLOUR, EXPRESSION_WARP = 5, 3  # per photo, not heritable
# Where each photo's expression coefficients go in a person's coefficient vectors.
EXPRESSION_COLOUR_SLOTS = slice(HERITABLE_COLOUR + INDIVIDUAL_COLOUR,
                                HERITABLE_COLOUR + INDIVIDUAL_COLOUR + EXPRESSION_COLOUR)
EXPRESSION_WARP_SLOTS = slice(HERITABLE_WARP + INDIVIDUAL_WARP, HERITABLE_WARP + INDIVIDUAL_WARP + EXPRESSION_WARP)
MUTATION = 0.02  # chance that an inherited allele is redrawn from the founder distribution

# Components are scaled to equal energy (root mean square over the photo at coefficient 1), like
# orthonormal eigenfaces, so that every one carries about as much kin signal; a small, sharp component
# is capped at a peak instead, so it never saturates the face.
COLOUR_RMS, COLOUR_PEAK = 0.045, 0.3  # pixels in [0, 1]
WARP_RMS, WARP_PEAK = 0.017, 0.1  # grid units (the photo is 2 wide)
INDIVIDUAL_SD = 0.35  # per-person non-heritable coefficients
SEX_WEIGHT = 0.8  # how far the sex component moves a face
RENDER_MAX = 128  # photos larger than this are drawn at this size and scaled up (the bases are smooth)
GAMMA_STEPS = 1024  # resolution of the gamma lookup table

# Per-photo nuisance at ``StyleSettings.nuisance`` = 1 (every amplitude is multiplied by it). Standard
# deviations unless said otherwise; calibrated so raw-pixel cosine similarity still finds some kin.
NUISANCE = {
    "expression": 0.6,  # expression coefficients
    "shift": 0.035,  # grid units (the photo is 2 wide)
    "scale": 0.05,  # log scale
    "tilt": 0.06,  # radians
    "gradient": 0.09,  # light falloff across the photo
    "brightness": 0.1,  # log gain
    "cast": 0.05,  # log gain per channel
    "gamma": 0.1,  # log gamma
    "backdrop": 0.08,  # backdrop tint per channel
    "occluded": 0.3,  # share of photos with an occluder
    "blur": 0.7,  # upper end of a uniform blur radius, in pixels of a 64-pixel photo
    "noise": 0.035,  # upper end of a uniform sensor noise level
}

# The mean face's colours (RGB in [0, 1]).
BACKDROP = (0.55, 0.56, 0.58)
SKIN = (0.78, 0.6, 0.48)
HAIR = (0.30, 0.22, 0.16)
SHIRT = (0.35, 0.40, 0.50)
GREY_HAIR = (0.78, 0.78, 0.76)


# --------------------------------------------------------------------------- fixed tables


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(u, v)`` in [-1, 1]: u to the right, v downward."""
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis)  # each (size, size), indexed [row, column]


def _soft_ellipse(u, v, cx, cy, rx, ry, edge=0.08) -> np.ndarray:
    """1 inside the ellipse, 0 outside, with a soft edge (so the mean face has no hard lines)."""
    d = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp((d - 1.0) / edge))


def _gauss(u, v, cx, cy, sx, sy) -> np.ndarray:
    return np.exp(-0.5 * (((u - cx) / sx) ** 2 + ((v - cy) / sy) ** 2))


def _paint(canvas: np.ndarray, mask: np.ndarray, colour) -> None:
    """Alpha-blend ``colour`` over ``canvas`` where ``mask`` (in [0, 1]) says, in place."""
    canvas += mask[..., None] * (np.asarray(colour, float) - canvas)


def _mean_face(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """The template every person varies from, plus hair, skin and backdrop masks (for age and tint)."""
    canvas = np.empty(u.shape + (3,))
    canvas[:] = BACKDROP
    _paint(canvas, _soft_ellipse(u, v, 0.0, 1.25, 0.95, 0.5, 0.05), SHIRT)  # shoulders
    _paint(canvas, _soft_ellipse(u, v, 0.0, 0.55, 0.22, 0.4, 0.06), SKIN)  # neck
    hair = _soft_ellipse(u, v, 0.0, -0.12, 0.66, 0.74, 0.05)
    _paint(canvas, hair, HAIR)
    face = _soft_ellipse(u, v, 0.0, 0.06, 0.52, 0.66, 0.05) * (1 - _soft_ellipse(u, v, 0.0, -0.75, 0.7, 0.32, 0.08))
    _paint(canvas, face, SKIN)
    for side in (-1, 1):
        _paint(canvas, 0.9 * _gauss(u, v, side * 0.21, -0.06, 0.075, 0.04), (0.97, 0.97, 0.95))  # eye white
        _paint(canvas, 0.95 * _gauss(u, v, side * 0.21, -0.06, 0.035, 0.035), (0.2, 0.15, 0.12))  # iris
        _paint(canvas, 0.8 * _gauss(u, v, side * 0.21, -0.18, 0.1, 0.022), HAIR)  # brow
        _paint(canvas, 0.25 * _gauss(u, v, side * 0.3, 0.2, 0.1, 0.07), (0.9, 0.5, 0.45))  # cheek
    _paint(canvas, 0.35 * _gauss(u, v, 0.0, 0.12, 0.045, 0.12), (0.6, 0.42, 0.33))  # nose shade
    _paint(canvas, 0.85 * _gauss(u, v, 0.0, 0.38, 0.14, 0.03), (0.68, 0.32, 0.32))  # mouth
    hair_only = np.clip(hair - face, 0, 1)
    person = np.maximum.reduce([hair, face, _soft_ellipse(u, v, 0.0, 1.25, 0.95, 0.5, 0.05),
                                _soft_ellipse(u, v, 0.0, 0.55, 0.22, 0.4, 0.06)])
    return canvas, hair_only, face, 1 - person


@dataclass(frozen=True)
class ColourBump:
    """One Gaussian bump of colour: where, how wide, which RGB direction."""

    cx: float
    cy: float
    sx: float
    sy: float
    rgb: tuple[float, float, float]


@dataclass(frozen=True)
class WarpBump:
    """A local displacement: a Gaussian envelope times a shift plus a linear stretch about its centre."""

    cx: float
    cy: float
    sigma: float
    shift: tuple[float, float]
    stretch: tuple[float, float, float, float]  # 2x2 matrix, row-major


def _colour_component(rng: np.random.Generator, spread: float, bumps: int) -> list[ColourBump]:
    """A few bumps with one shared colour direction: mostly lightness, some hue (like skin, hair, eyes)."""
    # Lightness at least half the weight: pure-hue components turned faces green or purple.
    lightness = rng.uniform(0.5, 1.2) * rng.choice((-1.0, 1.0))
    hue = rng.normal(0, 0.25, 3)
    direction = lightness + hue
    direction = direction / np.linalg.norm(direction)
    result = []
    for _ in range(bumps):
        # Centres on the head, so the heritable signal sits where the face is, not on the backdrop.
        cx, cy = rng.normal(0, spread * 0.45), rng.normal(-0.02, spread * 0.5)
        size = rng.uniform(0.1, 0.34)
        aspect = np.exp(rng.normal(0, 0.4))
        sign = 1.0 if rng.random() < 0.7 else -1.0  # a component may lighten one part and darken another
        result.append(ColourBump(cx, cy, size * aspect, size / aspect, tuple(sign * direction * rng.uniform(0.6, 1.0))))
    return result


def _warp_component(rng: np.random.Generator, spread: float) -> list[WarpBump]:
    """One or two mirrored local moves/stretches (faces are roughly symmetric, so eyes move together)."""
    cx, cy = abs(rng.normal(0, spread * 0.3)), rng.normal(0, spread * 0.35)
    sigma = rng.uniform(0.15, 0.35)
    shift = rng.normal(0, 1, 2)
    stretch = rng.normal(0, 1, 4) * 1.2
    scale = 1.0 / (np.linalg.norm(shift) + np.linalg.norm(stretch) * sigma + 1e-9)
    shift, stretch = shift * scale, stretch * scale
    bump = WarpBump(cx, cy, sigma, tuple(shift), tuple(stretch))
    if cx < 0.08:
        return [bump]
    mirror = (-1.0, 1.0)  # the mirrored twin: x-shift flips, off-diagonal stretch flips
    twin = WarpBump(-cx, cy, sigma, (shift[0] * mirror[0], shift[1]),
                    (stretch[0], -stretch[1], -stretch[2], stretch[3]))
    return [bump, twin]


def _render_colour(u, v, bumps: list[ColourBump]) -> np.ndarray:
    image = np.zeros(u.shape + (3,))
    for b in bumps:
        image += _gauss(u, v, b.cx, b.cy, b.sx, b.sy)[..., None] * np.asarray(b.rgb)
    return image


def _render_warp(u, v, bumps: list[WarpBump]) -> np.ndarray:
    field = np.zeros(u.shape + (2,))
    for b in bumps:
        g = _gauss(u, v, b.cx, b.cy, b.sigma, b.sigma)
        du, dv = u - b.cx, v - b.cy
        m = b.stretch
        field[..., 0] += g * (b.shift[0] + m[0] * du + m[1] * dv)
        field[..., 1] += g * (b.shift[1] + m[2] * du + m[3] * dv)
    return field


def _normalised(image: np.ndarray, rms: float, peak: float) -> np.ndarray:
    """Scale to root mean square ``rms``, unless that would take the largest change past ``peak``."""
    scale = rms / (np.sqrt((image ** 2).mean()) + 1e-12)
    return image * min(scale, peak / (np.abs(image).max() + 1e-12))


@dataclass
class Tables:
    """One size's rendering tables: mean face, masks, colour and warp bases as matrices."""

    mean: np.ndarray  # (S*S*4,) float32: RGB and the backdrop mask
    colour: np.ndarray  # (C, S*S*4) float32: heritable, individual, expression, sex, age lines (mask channel 0)
    warp: np.ndarray  # (W, S*S*2) float32: heritable, individual, expression, sex, youth
    hair: np.ndarray  # (S, S, 1) float32 hair mask (for greying)
    u: np.ndarray  # (S, S) grid
    v: np.ndarray


# --------------------------------------------------------------------------- per person / per photo


@dataclass(frozen=True)
class Person:
    """What stays fixed across one person's photos: coefficients on the colour and warp bases."""

    colour: np.ndarray  # heritable + individual + (zeros for expression) + sex + age lines
    warp: np.ndarray
    greying: float  # 0..1, share of hair turned grey
    youth: float  # 0..1, 1 for a baby: a smoother photo


@dataclass(frozen=True)
class Shot:
    """One photo's nuisance."""

    expression: np.ndarray
    expression_warp: np.ndarray
    shift: tuple[float, float]
    scale: float
    tilt: float
    gradient: tuple[float, float]
    brightness: float
    cast: np.ndarray
    gamma: float
    backdrop: np.ndarray
    occluder: tuple | None
    blur: float
    noise: float
    quality: int


class EigenStyle:
    """Eigenface-like abstract components, Mendelian per component (see the module docstring)."""

    name = "eigen"
    summary = ("mean face + 40 abstract smooth components (30 colour bumps, 10 warps) / diploid Mendelian per "
               "component, one random allele from each parent, phenotype = allele mean, 2% allele mutation / "
               "expression components, shift-scale-tilt, light gradient, colour cast, gamma, occluders, blur, "
               "noise, JPEG quality")

    def __init__(self, settings: StyleSettings = StyleSettings()):
        self.settings = settings
        rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 0xE16E]))
        # The style's fixed components, drawn once from the seed; rendered per size on demand.
        self._colour_parts = (
            [_colour_component(rng, 1.0, int(rng.integers(2, 5))) for _ in range(HERITABLE_COLOUR)]
            + [_colour_component(rng, 1.0, int(rng.integers(1, 4))) for _ in range(INDIVIDUAL_COLOUR)]
            + [_colour_component(rng, 0.6, int(rng.integers(1, 3))) for _ in range(EXPRESSION_COLOUR)]
        )
        self._warp_parts = ([_warp_component(rng, 1.0) for _ in range(HERITABLE_WARP)]
                            + [_warp_component(rng, 1.0) for _ in range(INDIVIDUAL_WARP)]
                            + [_warp_component(rng, 0.7) for _ in range(EXPRESSION_WARP)])
        self._tables: dict[int, Tables] = {}

    # ----------------------------------------------------------------- genome

    def founder(self, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((2, COMPONENTS))

    def child(self, rng: np.random.Generator, father: np.ndarray, mother: np.ndarray) -> np.ndarray:
        # Per component, one of each parent's two alleles (independent assortment, no linkage).
        columns = np.arange(COMPONENTS)
        from_father = father[rng.integers(0, 2, COMPONENTS), columns]
        from_mother = mother[rng.integers(0, 2, COMPONENTS), columns]
        genome = np.stack([from_father, from_mother])
        # Mutation redraws an allele from the founder distribution (a new allele, not a nudge).
        mutated = rng.random(genome.shape) < MUTATION
        fresh = rng.standard_normal(genome.shape)
        return np.where(mutated, fresh, genome)

    def oracle_features(self, genome: np.ndarray) -> np.ndarray:
        # The phenotype, what the photos show: the mean of the two alleles of every component.
        return np.asarray(genome, float).reshape(2, COMPONENTS).mean(axis=0)

    def oracle_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Log likelihood ratio of "phenotypes correlated with rho = 1/2" (parent-child, siblings: one
        # allele in two shared) against "independent", per-component variance 1/2. It beats plain distance
        # (test AUC 0.968 against 0.953 on 300+60 families) because it also weighs how far from the mean
        # the shared values lie: two people far out on the same side are likelier kin than two near zero.
        a, b = np.asarray(a, float), np.asarray(b, float)
        rho, variance = 0.5, 0.5
        cross, squares = (a * b).sum(axis=1), (a * a).sum(axis=1) + (b * b).sum(axis=1)
        return (2 * rho * cross - rho * rho * squares) / (2 * variance * (1 - rho * rho))

    # ----------------------------------------------------------------- person

    def appearance(self, genome: np.ndarray, sex: str, age: int, rng: np.random.Generator) -> Person:
        phenotype = np.asarray(genome, float).reshape(2, COMPONENTS).mean(axis=0)
        male = 1.0 if sex == "m" else -1.0
        lines = float(np.clip((age - 35) / 45, 0, 1))
        youth = float(np.clip((14 - age) / 13, 0, 1))
        colour = np.concatenate([
            phenotype[:HERITABLE_COLOUR],
            rng.normal(0, INDIVIDUAL_SD, INDIVIDUAL_COLOUR),
            np.zeros(EXPRESSION_COLOUR),
            [SEX_WEIGHT * male * (1 - youth), lines],  # children show little of the sex component
        ])
        warp = np.concatenate([
            phenotype[HERITABLE_COLOUR:],
            rng.normal(0, INDIVIDUAL_SD, INDIVIDUAL_WARP),
            np.zeros(EXPRESSION_WARP),
            [SEX_WEIGHT * male * (1 - youth), youth],
        ])
        greying = float(np.clip((age - 45) / 35, 0, 1) * rng.uniform(0.3, 0.9))
        return Person(colour.astype(np.float32), warp.astype(np.float32), greying, youth)

    # ----------------------------------------------------------------- photo

    def photo(self, appearance: Person, rng: np.random.Generator, size: int) -> bytes:
        shot = self._shot(rng)
        # Everything here is smooth, so large photos are drawn at RENDER_MAX and scaled up (3x faster at 224).
        render = min(size, RENDER_MAX)
        image = Image.fromarray(self._pixels(appearance, shot, self.tables(render), render))
        blur = shot.blur + 0.8 * appearance.youth  # children's photos are softer
        if blur > 0.05:
            image = image.filter(ImageFilter.GaussianBlur(blur * render / 64))
        if render != size:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        if shot.noise > 0:
            image = _grain(image, shot.noise, rng)  # after blur and scaling: the sensor's own grain
        return encode_jpeg(image, shot.quality)

    def _shot(self, rng: np.random.Generator) -> Shot:
        """Every per-photo nuisance, all from ``rng``; amplitudes scale with ``settings.nuisance``."""
        n = self.settings.nuisance
        a = {key: value * n for key, value in NUISANCE.items()}
        occluder = _occluder(rng) if rng.random() < min(a["occluded"], 0.9) else None
        return Shot(
            expression=rng.normal(0, a["expression"], EXPRESSION_COLOUR),
            expression_warp=rng.normal(0, a["expression"], EXPRESSION_WARP),
            shift=(float(rng.normal(0, a["shift"])), float(rng.normal(0, a["shift"]))),
            scale=float(np.exp(rng.normal(0, a["scale"]))),
            tilt=float(rng.normal(0, a["tilt"])),
            gradient=(float(rng.normal(0, a["gradient"])), float(rng.normal(0, a["gradient"]))),
            brightness=float(np.exp(rng.normal(0, a["brightness"]))),
            cast=np.exp(rng.normal(0, a["cast"], 3)),
            gamma=float(np.exp(rng.normal(0, a["gamma"]))),
            backdrop=rng.normal(0, a["backdrop"], 3),
            occluder=occluder,
            blur=float(rng.uniform(0, a["blur"])),
            noise=float(rng.uniform(0, a["noise"])),
            # JPEG quality 40-95 at nuisance 1; never below 20 at higher nuisance.
            quality=int(rng.integers(max(20, round(95 - 55 * n)), 96)),
        )

    def tables(self, size: int) -> Tables:
        """This size's tables, built on first use (about 0.15 s at 128) and kept."""
        if size not in self._tables:
            self._tables[size] = self._build_tables(size)
        return self._tables[size]

    def _build_tables(self, size: int) -> Tables:
        u, v = _grid(size)
        mean, hair, face, backdrop = _mean_face(u, v)
        # Components live on the person: the backdrop is no part of anyone's looks.
        on_person = (1 - backdrop)[..., None]
        colours = [_normalised(_render_colour(u, v, parts) * on_person, COLOUR_RMS, COLOUR_PEAK)
                   for parts in self._colour_parts]
        colours.append(_sex_colour(u, v) * on_person)
        colours.append(_age_lines(u, v) * face[..., None])
        warps = [_normalised(_render_warp(u, v, parts), WARP_RMS, WARP_PEAK) for parts in self._warp_parts]
        warps.append(_sex_warp(u, v))
        warps.append(_youth_warp(u, v))
        with_mask = np.concatenate([mean, backdrop[..., None]], axis=2)
        no_mask = np.zeros(u.shape + (1,))
        return Tables(
            mean=with_mask.astype(np.float32).ravel(),
            colour=np.stack([np.concatenate([c, no_mask], axis=2).ravel() for c in colours]).astype(np.float32),
            warp=np.stack([w.ravel() for w in warps]).astype(np.float32),
            hair=hair[..., None].astype(np.float32),
            u=u.astype(np.float32), v=v.astype(np.float32),
        )

    def _pixels(self, person: Person, shot: Shot, t: Tables, size: int) -> np.ndarray:
        """The photo as uint8 pixels: basis sum, warp and pose, backdrop tint, occluder, light."""
        colour = person.colour.copy()
        colour[EXPRESSION_COLOUR_SLOTS] = shot.expression
        warp = person.warp.copy()
        warp[EXPRESSION_WARP_SLOTS] = shot.expression_warp
        # Channel 3 is the backdrop mask (no component touches it), warped along with the face below.
        face = (t.mean + colour @ t.colour).reshape(size, size, 4)
        # Grey hair blends toward grey where the hair is (the hair shade itself is a component).
        if person.greying > 0:
            face[..., :3] += (person.greying * t.hair) * (np.asarray(GREY_HAIR, np.float32) - face[..., :3])
        # Where each output pixel looks in face coordinates: undo pose, then the person's warps.
        su, sv = _pose(t.u, t.v, shot)
        displacement = (warp @ t.warp).reshape(size, size, 2)
        sampled = _bilinear(face, su - displacement[..., 0], sv - displacement[..., 1])
        image = sampled[..., :3] + sampled[..., 3:] * shot.backdrop.astype(np.float32)  # tint off the person
        if shot.occluder is not None:
            _occlude(image, su, sv, shot.occluder)  # posed with the head, but a rigid object: not warped
        return _light(image, t.u, t.v, shot)


def _occluder(rng: np.random.Generator) -> tuple:
    """An occluder in posed face coordinates: kind, rectangle (u0, v0, u1, v1) and colour."""
    kind = ("sunglasses", "hand", "hat", "bar")[int(rng.choice(4, p=(0.35, 0.25, 0.25, 0.15)))]
    if kind == "sunglasses":
        v0 = rng.normal(-0.12, 0.03)
        rect = (-0.4 + rng.normal(0, 0.03), v0, 0.4 + rng.normal(0, 0.03), v0 + rng.uniform(0.12, 0.18))
        colour = rng.uniform(0.02, 0.15, 3)
    elif kind == "hand":
        cu, cv = rng.uniform(-0.35, 0.35), rng.uniform(0.0, 0.5)
        w, h = rng.uniform(0.18, 0.3), rng.uniform(0.15, 0.3)
        rect = (cu - w, cv - h, cu + w, cv + h)
        colour = np.array(SKIN) * rng.uniform(0.6, 1.1) + rng.normal(0, 0.04, 3)
    elif kind == "hat":
        rect = (-1.2, -1.2, 1.2, rng.uniform(-0.55, -0.3))
        colour = rng.uniform(0.05, 0.9, 3)
    else:
        cu, cv = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)
        horizontal = rng.random() < 0.5
        long, short = rng.uniform(0.4, 1.0), rng.uniform(0.06, 0.15)
        w, h = (long, short) if horizontal else (short, long)
        rect = (cu - w, cv - h, cu + w, cv + h)
        colour = rng.uniform(0.0, 1.0, 3)
    return kind, tuple(float(x) for x in rect), np.clip(colour, 0, 1).astype(np.float32)


def _occlude(image: np.ndarray, su: np.ndarray, sv: np.ndarray, occluder: tuple) -> None:
    """Paint the occluder in posed face coordinates, so it stays on the eyes or chin whatever the pose."""
    _, (u0, v0, u1, v1), colour = occluder
    inside = (su >= u0) & (su <= u1) & (sv >= v0) & (sv <= v1)
    image[inside] = colour


def _pose(u: np.ndarray, v: np.ndarray, shot: Shot) -> tuple[np.ndarray, np.ndarray]:
    """Face coordinates seen by each output pixel: inverse of shift, scale and tilt."""
    du, dv = u - np.float32(shot.shift[0]), v - np.float32(shot.shift[1])
    cos, sin = np.float32(np.cos(shot.tilt) / shot.scale), np.float32(np.sin(shot.tilt) / shot.scale)
    return cos * du + sin * dv, -sin * du + cos * dv


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``image`` (S, S, C) at grid coordinates (u, v); outside the canvas the edge pixel repeats."""
    size, channels = image.shape[0], image.shape[2]
    x = np.clip((u + 1) * (size / 2) - 0.5, 0, size - 1.001)
    y = np.clip((v + 1) * (size / 2) - 0.5, 0, size - 1.001)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    flat = image.reshape(-1, channels)
    i = y0 * size + x0
    # np.take is several times faster than fancy indexing for row gathers.
    top = np.take(flat, i, axis=0)
    top += (np.take(flat, i + 1, axis=0) - top) * fx
    bottom = np.take(flat, i + size, axis=0)
    bottom += (np.take(flat, i + size + 1, axis=0) - bottom) * fx
    top += (bottom - top) * fy
    return top


def _light(image: np.ndarray, u: np.ndarray, v: np.ndarray, shot: Shot) -> np.ndarray:
    """Illumination gradient, brightness, colour cast and gamma; returns uint8."""
    gain = (1 + np.float32(shot.gradient[0]) * u + np.float32(shot.gradient[1]) * v) * np.float32(shot.brightness)
    image *= np.maximum(gain, 0.05)[..., None] * shot.cast.astype(np.float32)
    np.clip(image, 0, 1, out=image)
    # Gamma through a lookup table: a power per pixel costs more than the rest of the lighting.
    lut = np.round(np.linspace(0, 1, GAMMA_STEPS) ** shot.gamma * 255).astype(np.uint8)
    return np.take(lut, (image * (GAMMA_STEPS - 1) + 0.5).astype(np.int32))


def _grain(image: Image.Image, noise: float, rng: np.random.Generator) -> Image.Image:
    """Sensor noise in luminance (one draw per pixel, shared by R, G and B)."""
    pixels = np.asarray(image, dtype=np.float32)
    size = pixels.shape[0]
    pixels = pixels + rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(noise * 255)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def _sex_colour(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Male (+) / female (-): beard shadow on the lower face against redder lips and cheeks."""
    image = np.zeros(u.shape + (3,))
    beard = _gauss(u, v, 0.0, 0.42, 0.3, 0.16) * (1 - 0.7 * _gauss(u, v, 0.0, 0.38, 0.15, 0.04))  # around the lips
    image += beard[..., None] * (-0.12, -0.12, -0.1)
    image += _gauss(u, v, 0.0, 0.38, 0.13, 0.035)[..., None] * (-0.1, 0.02, 0.02)  # paler lips
    for side in (-1, 1):
        image += _gauss(u, v, side * 0.21, -0.18, 0.1, 0.025)[..., None] * (-0.12, -0.1, -0.08)  # heavier brows
        image += _gauss(u, v, side * 0.55, 0.1, 0.12, 0.35)[..., None] * (0.12, 0.13, 0.15)  # short at the sides
    return image


def _sex_warp(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Male (+): a wider, longer jaw."""
    g = _gauss(u, v, 0.0, 0.45, 0.45, 0.25)
    return np.stack([0.1 * g * u, 0.06 * g * (v - 0.2)], axis=-1)


def _youth_warp(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A child's face: features drawn toward the lower middle (bigger forehead, rounder face)."""
    g = _gauss(u, v, 0.0, 0.1, 0.5, 0.5)
    return np.stack([0.12 * g * u, 0.12 * g * (v + 0.6) * 0.5], axis=-1)


def _age_lines(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fine dark lines on the forehead, at the eye corners and beside the mouth (scaled by age)."""
    forehead = _gauss(u, v, 0.0, -0.38, 0.3, 0.08) * np.maximum(np.sin(v * 70), 0) ** 4
    lines = forehead
    for side in (-1, 1):
        corner = _gauss(u, v, side * 0.38, -0.06, 0.05, 0.06) * np.maximum(np.sin((v + 0.3 * side * u) * 60), 0) ** 4
        fold = _gauss(u, v, side * (0.14 + 0.1 * (v - 0.15)), 0.28, 0.02, 0.1)
        lines = lines + corner + 0.8 * fold
    return -0.22 * lines[..., None] * np.array([1.0, 1.05, 1.1]) - 0.05  # -0.05: older skin a shade darker


STYLE = EigenStyle
