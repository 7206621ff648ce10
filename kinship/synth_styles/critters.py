"""The ``critters`` style: cartoon creature and robot heads assembled from discrete parts.

What it draws: a head outline (round, rounded square, shield, hexagon, bulb or scalloped) in a coat
colour (a hue gene times a shade gene) with a marking pattern (spots, bands, patches, an eye mask or a
split face) in a marking colour; one, two or three eyes of one of five kinds (round, slit, LED square,
visor, bug) in a bright eye colour; a crown (round or pointed ears, antennae, horns, a spiky crest) in a
crown colour; a snout (button, triangle, beak, muzzle, pig snout) in a nose colour; a mouth (smile,
fangs, teeth, an O, a robot grille), cheeks (whiskers, blush, dots) and shoulders in a body colour.
Twenty-two genes: fifteen categorical (an integer choice among a gene's alleles) and seven continuous
(sizes and spacings, in [0, 1]).

Inheritance: the genes sit on six "chromosomes" (head, pattern, eyes, crown, snout, mouth-and-body). A
child takes each chromosome whole from one parent picked at random, so genes on it travel together
(linkage); then each categorical gene is redrawn with probability 0.03 and each continuous gene gets a
little noise. No blending and no per-gene Mendelian draw.

Not heritable: age (children have smaller heads, bigger eyes and small crowns; elders grey and get
forehead wrinkles), sex (males grow a larger crown, females get eyelashes), a per-person jitter of
sizes and coat colour, spot and patch positions, and one accessory per person (bow, bandana, glasses,
earring, plaster or none).

Nuisance, drawn afresh for every photo and scaled by ``StyleSettings.nuisance``: roll (about +-15
degrees), a yaw that squashes the head and slides the face parts sideways, scale 0.85-1.15, shift;
a strong background (plain, gradient, shapes, stripes, blotches or checks, in any hue); an occluder
in about a third of the photos (a bar, a hand or an object over part of the head); directional light,
colour temperature, blur, sensor noise and JPEG quality 50-95.

Only numpy and Pillow: this generator is written apart from the other styles on purpose (the transfer
benchmark needs generators that differ in kind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from kinship.synth_style import StyleSettings, encode_jpeg

# --------------------------------------------------------------------------- genome

# (name, alleles): alleles > 0 is a categorical gene with that many choices, 0 a continuous one in [0, 1].
# Grouped by chromosome; a chromosome is inherited whole. The large coloured areas (coat hue, coat shade,
# markings, crown, body) sit on different chromosomes: with one colour chromosome, kin matched in colour
# all or nothing and raw pixels could not tell half the parent-child pairs from strangers.
CHROMOSOMES = (
    (("head_shape", 6), ("head_width", 0), ("head_height", 0), ("coat_hue", 8)),
    (("pattern", 6), ("mark_colour", 7), ("mark_scale", 0)),
    (("eye_type", 5), ("eye_count", 3), ("eye_colour", 7), ("eye_size", 0), ("eye_spacing", 0)),
    (("crown", 6), ("crown_colour", 6), ("crown_size", 0)),
    (("snout", 5), ("nose_colour", 5), ("cheeks", 4), ("coat_shade", 3)),
    (("mouth", 5), ("mouth_width", 0), ("body_colour", 8)),
)
GENES = tuple(gene for chromosome in CHROMOSOMES for gene in chromosome)
G = {name: index for index, (name, _) in enumerate(GENES)}
ALLELES = np.array([alleles for _, alleles in GENES])
CATEGORICAL = ALLELES > 0
CHROMOSOME_OF = np.array([c for c, chromosome in enumerate(CHROMOSOMES) for _ in chromosome])
MUTATION = 0.03  # chance that a child's categorical gene is redrawn from the founder frequencies
DRIFT = 0.02  # standard deviation added to each inherited continuous gene
ALLELE_SKEW = 6.0  # Dirichlet concentration of allele frequencies: mild skew, so strangers rarely match
MATCH_TOLERANCE = 0.1  # oracle: continuous genes this far apart no longer count as the same allele

# Fixed colour tables. Eye colours are saturated so that they survive 64x64 JPEGs; marking colours are
# very dark or very light, so markings show on any coat.
EYE_COLOURS = np.array([(230, 40, 40), (250, 150, 20), (240, 225, 40), (60, 200, 70),
                        (40, 200, 225), (50, 90, 235), (175, 60, 225)], float)
MARK_COLOURS = np.array([(25, 20, 20), (90, 50, 25), (245, 245, 240), (240, 225, 170),
                         (150, 30, 40), (30, 40, 100), (250, 160, 60)], float)
NOSE_COLOURS = np.array([(30, 25, 25), (240, 140, 165), (240, 150, 40), (110, 70, 40), (240, 240, 235)], float)
CROWN_COLOURS = np.array([(235, 225, 200), (40, 35, 40), (215, 170, 40), (165, 170, 180), (170, 60, 30),
                          (40, 140, 130)], float)
BODY_COLOURS = np.array([(40, 50, 110), (120, 30, 40), (100, 110, 40), (210, 170, 50), (120, 120, 125),
                         (30, 120, 120), (110, 60, 150), (230, 230, 225)], float)
# Coat colour is two genes on two chromosomes, like pigment and dilution genes in real animals: a hue
# (head chromosome) and a shade (snout chromosome), each (saturation, value).
SHADES = ((0.5, 0.95), (0.75, 0.8), (0.85, 0.55))
ELDER_GREY = np.array((175, 175, 170), float)
HAND_SKIN = np.array([(235, 190, 160), (200, 145, 105), (140, 95, 60), (95, 65, 45)], float)
# How far backdrop colours may stray from mid-grey at nuisance 1. At 1.0 (any colour) the backdrop
# swamped raw pixels (baseline AUC ~0.59); 0.45 still gives every hue and clearly different backdrops.
BACKDROP_STRENGTH = 0.45
ACCESSORIES = ("none", "none", "none", "bow", "bandana", "glasses", "earring", "plaster")


def _coat_palette(rng: np.random.Generator) -> np.ndarray:
    """Coat colours ``[hue, shade, rgb]``: eight hues around the circle (offset by the data set's seed) x shades."""
    offset = rng.uniform(0, 1)
    hues = (offset + np.arange(ALLELES[G["coat_hue"]]) / ALLELES[G["coat_hue"]]) % 1.0
    return np.array([[_hsv(hue, saturation, value) for saturation, value in SHADES] for hue in hues])


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    """HSV in [0, 1] to RGB in [0, 255]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i]
    return (255 * r, 255 * g, 255 * b)


def _rgb(colour) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(colour), 0, 255))


# --------------------------------------------------------------------------- appearance


@dataclass
class Critter:
    """One person's fixed look: genes turned into sizes (fractions of the canvas) and colours."""

    shape: int
    hw: float  # head half-width
    hh: float  # head half-height
    coat: np.ndarray
    body: np.ndarray
    pattern: int
    mark: np.ndarray
    mark_scale: float
    blobs: np.ndarray  # per-person spot/patch centres (head units) and radii (fractions of hw)
    eye_type: int
    eye_count: int
    eye_colour: np.ndarray
    eye_radius: float
    eye_spacing: float
    crown: int
    crown_colour: np.ndarray
    crown_size: float
    snout: int
    nose: np.ndarray
    cheeks: int
    mouth: int
    mouth_width: float
    lashes: bool
    wrinkles: int
    accessory: str
    accessory_colour: np.ndarray
    accessory_side: int


def critter_of(genome: np.ndarray, sex: str, age: int, rng: np.random.Generator, coats: np.ndarray) -> Critter:
    """Genes plus age, sex and per-person extras from ``rng`` -> a ``Critter``.

    Continuous genes get a per-person jitter, so a child with a parent's chromosome is alike, not a copy.
    """
    g = genome
    jitter = rng.normal(0, 0.04, len(GENES))
    c = {name: float(np.clip(g[G[name]] + jitter[G[name]], 0, 1)) for name, alleles in GENES if alleles == 0}
    # Colours fade toward grey from 50, by at most 0.3: more greying made grandparents look like strangers.
    child, elder = age < 13, max(0.0, min(0.3, (age - 50) / 60))
    head = 0.85 if child else 1.0
    coat = coats[int(g[G["coat_hue"]]), int(g[G["coat_shade"]])] + rng.normal(0, 6, 3)
    coat, body = (colour * (1 - elder) + ELDER_GREY * elder for colour in (coat, BODY_COLOURS[int(g[G["body_colour"]])]))
    mark = MARK_COLOURS[int(g[G["mark_colour"]])]
    crown_colour = CROWN_COLOURS[int(g[G["crown_colour"]])]
    crown_size = (0.75 + 0.5 * c["crown_size"]) * (0.7 if child else 1.0) * (1.15 if sex == "m" else 0.92)
    count = 3 + int(c["mark_scale"] * 6)
    # Spots: many small ones when mark_scale is high; patches use the first two, bigger.
    blobs = np.column_stack([rng.uniform(-0.75, 0.75, (count, 2)),
                             (0.12 + 0.12 * (1 - c["mark_scale"])) * rng.uniform(0.8, 1.2, count)])
    return Critter(
        shape=int(g[G["head_shape"]]), hw=(0.27 + 0.1 * c["head_width"]) * head, hh=(0.25 + 0.08 * c["head_height"]) * head,
        coat=coat, body=body, pattern=int(g[G["pattern"]]), mark=mark, mark_scale=c["mark_scale"], blobs=blobs,
        eye_type=int(g[G["eye_type"]]), eye_count=1 + int(g[G["eye_count"]]),
        eye_colour=EYE_COLOURS[int(g[G["eye_colour"]])],
        eye_radius=(0.03 + 0.035 * c["eye_size"]) * (1.25 if child else 1.0), eye_spacing=0.3 + 0.3 * c["eye_spacing"],
        crown=int(g[G["crown"]]), crown_colour=crown_colour, crown_size=crown_size,
        snout=int(g[G["snout"]]), nose=NOSE_COLOURS[int(g[G["nose_colour"]])], cheeks=int(g[G["cheeks"]]),
        mouth=int(g[G["mouth"]]), mouth_width=0.3 + 0.35 * c["mouth_width"],
        lashes=sex == "f", wrinkles=int(elder * 14),
        accessory=ACCESSORIES[int(rng.integers(0, len(ACCESSORIES)))] if age >= 3 else "none",
        accessory_colour=rng.uniform(30, 240, 3), accessory_side=int(rng.choice((-1, 1))),
    )


# --------------------------------------------------------------------------- per-photo nuisance


@dataclass
class Shot:
    """One photo's nuisance; nothing here is shared between photos, people or families."""

    angle: float  # roll, degrees
    scale: float
    shift: tuple[float, float]
    yaw: float  # -1..1: squashes the head and slides the parts toward one side
    accessory: bool
    occluder: int  # -1 none, 0 bar, 1 hand, 2 object
    light_angle: float
    light: float  # strength of the directional fall-off
    ambient: float
    temperature: float  # > 0 warm, < 0 cool
    blur: float  # radius at 64 pixels
    noise: float
    quality: int


def shot_of(rng: np.random.Generator, k: float) -> Shot:
    """Draw one photo's pose, occluder, light and camera; ``k`` scales it all (0 = studio photo)."""
    # Pose is triangular on [-1, 1]: the full range occurs, but most photos are near frontal, as in a
    # photo album (uniform poses hid kinship from raw pixels almost entirely: AUC ~0.6 instead of ~0.66).
    pose = rng.uniform(-0.5, 0.5, (2, 5)).sum(0)
    u = rng.uniform(-1, 1, 3)
    return Shot(
        angle=float(np.clip(15 * k * pose[0], -40, 40)), scale=float(np.clip(1 + 0.15 * k * pose[1], 0.6, 1.4)),
        shift=(float(0.04 * k * pose[2]), float(0.03 * k * pose[3])), yaw=float(np.clip(k * pose[4], -1, 1)),
        accessory=bool(rng.random() < 0.85),
        occluder=int(rng.integers(0, 3)) if rng.random() < min(0.9, 0.35 * k) else -1,
        light_angle=float(rng.uniform(0, 2 * math.pi)), light=float(0.35 * k * abs(u[0])),
        ambient=float(1 + 0.15 * k * u[1]), temperature=float(0.12 * k * u[2]),
        blur=float(rng.uniform(0.2, 0.8) * k) if rng.random() < 0.4 else 0.0,
        noise=float(rng.uniform(1, 7) * k), quality=int(round(95 - rng.uniform(0, 45) * min(1.0, k))),
    )


# --------------------------------------------------------------------------- drawing

CIRCLE = np.column_stack([np.cos(np.linspace(0, 2 * math.pi, 24, endpoint=False)),
                          np.sin(np.linspace(0, 2 * math.pi, 24, endpoint=False))])


def _outline(shape: int) -> np.ndarray:
    """Head outline in head units (x and y in -1..1, y down) for each head-shape allele."""
    theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    c, s = np.cos(theta), np.sin(theta)
    if shape == 0:  # round
        return np.column_stack([c, s])
    if shape == 1:  # rounded square (super-ellipse)
        return np.column_stack([np.sign(c) * np.abs(c) ** 0.4, np.sign(s) * np.abs(s) ** 0.4])
    if shape == 2:  # shield: wide flat top, narrowing to a blunt chin
        return np.array([(-1, -0.85), (1, -0.85), (0.95, -0.2), (0.2, 1), (-0.2, 1), (-0.95, -0.2)], float)
    if shape == 3:  # hexagon with pointed sides
        a = np.linspace(0, 2 * math.pi, 6, endpoint=False)
        return np.column_stack([np.cos(a), np.sin(a) * 1.1])
    if shape == 4:  # bulb: narrow top, wide jowls
        return np.array([(-0.45, -1), (0.45, -1), (0.85, -0.3), (1.05, 0.55), (0.7, 0.95),
                         (-0.7, 0.95), (-1.05, 0.55), (-0.85, -0.3)], float)
    r = 0.88 + 0.12 * np.cos(7 * theta)  # scalloped, seven lobes
    return np.column_stack([r * c, r * s])


OUTLINES = tuple(_outline(shape) for shape in range(6))


class Pen:
    """Draws in canvas fractions relative to the head centre, through the photo's pose.

    ``depth`` says how far a part sits in front of the head: the yaw slides deep parts (eyes, snout)
    further than the outline, which gives a cheap turned-head look without 3-D.
    """

    def __init__(self, image: Image.Image, look: Critter, shot: Shot):
        self.n = image.size[0]
        self.draw = ImageDraw.Draw(image)
        a = math.radians(shot.angle)
        self.cos, self.sin = math.cos(a) * shot.scale * self.n, math.sin(a) * shot.scale * self.n
        self.ox, self.oy = (0.5 + shot.shift[0]) * self.n, (0.55 + shot.shift[1]) * self.n
        self.squash = 1 - 0.22 * abs(shot.yaw)
        self.turn = 0.28 * shot.yaw * look.hw
        self.scale = shot.scale

    def pts(self, xy: np.ndarray, depth: float = 1.0) -> list[tuple[float, float]]:
        """Pixel positions of ``[N, 2]`` head-centred points: yaw (squash, slide), then roll, scale, shift."""
        x = xy[:, 0] * self.squash + self.turn * depth
        y = xy[:, 1]
        return list(zip((self.ox + self.cos * x - self.sin * y).tolist(), (self.oy + self.sin * x + self.cos * y).tolist()))

    def poly(self, xy, fill, depth: float = 1.0, draw: ImageDraw.ImageDraw | None = None) -> None:
        """A filled polygon, on the photo or on ``draw`` (a mask)."""
        (draw or self.draw).polygon(self.pts(np.asarray(xy, float), depth), fill=fill)

    def ellipse(self, x, y, rx, ry, fill, depth: float = 1.0, draw=None) -> None:
        """An ellipse as a 24-gon, so that roll and yaw turn it like everything else."""
        self.poly(CIRCLE * (rx, ry) + (x, y), fill, depth, draw)

    def line(self, xy, fill, width: float, depth: float = 1.0) -> None:
        """A polyline ``width`` canvas fractions thick (at least one pixel)."""
        pixels = max(1, int(round(width * self.n * self.scale)))
        self.draw.line(self.pts(np.asarray(xy, float), depth), fill=fill, width=pixels)

    def centre(self) -> tuple[float, float]:
        """The head centre in canvas fractions (for occluders, which ignore the pose)."""
        return self.ox / self.n, self.oy / self.n


def paint_critter(image: Image.Image, look: Critter, shot: Shot) -> Pen:
    """The creature, back to front: body, crown, head, markings, cheeks, eyes, snout, mouth, accessory."""
    p = Pen(image, look, shot)
    hw, hh = look.hw, look.hh
    coat = _rgb(look.coat)
    p.ellipse(0, hh + 0.24, hw * 1.6, 0.3, _rgb(look.body), depth=-0.3)  # shoulders
    _paint_crown(p, look)
    head = OUTLINES[look.shape] * (hw, hh)
    p.poly(head, coat, depth=0.0)
    _paint_markings(p, look, head)
    _paint_cheeks(p, look)
    _paint_eyes(p, look)
    _paint_snout(p, look)
    _paint_mouth(p, look)
    for k in range(look.wrinkles // 2):  # elders: forehead lines
        y = -0.62 * hh + k * 0.045
        p.line([(-0.3 * hw, y), (0, y - 0.012), (0.3 * hw, y)], _rgb(look.coat * 0.6), 0.008)
    if shot.accessory and look.accessory != "none":
        _paint_accessory(p, look)
    return p


def _paint_crown(p: Pen, look: Critter) -> None:
    """Ears, antennae, horns or a crest, drawn behind the head so their bases hide under it."""
    hw, hh, s = look.hw, look.hh, look.crown_size
    colour = _rgb(look.crown_colour)
    inner = _rgb(look.crown_colour * 0.7)
    for side in (-1, 1):
        if look.crown == 1:  # round ears
            r = 0.075 * s
            p.ellipse(side * 0.72 * hw, -0.85 * hh, r, r, colour, 0.3)
            p.ellipse(side * 0.72 * hw, -0.85 * hh, r * 0.55, r * 0.55, inner, 0.3)
        elif look.crown == 2:  # pointed ears
            base = side * 0.6 * hw
            tip = (base + side * 0.06 * s, -hh - 0.11 * s)
            p.poly([(base - 0.07 * s, -0.7 * hh), (base + 0.07 * s, -0.7 * hh), tip], colour, 0.3)
        elif look.crown == 3:  # antennae with a ball tip
            tip = (side * (0.45 * hw + 0.06 * s), -hh - 0.1 * s)
            p.line([(side * 0.25 * hw, -0.8 * hh), tip], _rgb(look.coat * 0.5), 0.014)
            p.ellipse(tip[0], tip[1], 0.03 * s, 0.03 * s, colour, 0.3)
        elif look.crown == 4:  # horns curving outward
            x = side * 0.45 * hw
            p.poly([(x - 0.035 * s, -0.75 * hh), (x + 0.035 * s, -0.75 * hh), (x + side * 0.09 * s, -hh - 0.06 * s),
                    (x + side * 0.14 * s, -hh - 0.1 * s), (x + side * 0.02 * s, -hh - 0.02 * s)], colour, 0.3)
    if look.crown == 5:  # spiky crest along the top
        for x in (-0.3, 0.0, 0.3):
            tall = 0.09 * s * (1.25 if x == 0 else 1.0)
            p.poly([(x * hw - 0.05 * s, -0.8 * hh), (x * hw + 0.05 * s, -0.8 * hh), (x * hw, -hh - tall)], colour, 0.3)


def _paint_markings(p: Pen, look: Critter, head: np.ndarray) -> None:
    """The coat pattern, drawn into a mask clipped to the head and filled with the marking colour."""
    if look.pattern == 0:
        return
    hw, hh, n = look.hw, look.hh, p.n
    marks = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(marks)
    if look.pattern == 1:  # spots, per-person positions
        for x, y, r in look.blobs:
            p.ellipse(x * hw, y * hh, r * hw, r * hw, 255, 0.6, draw)
    elif look.pattern == 2:  # horizontal bands
        bands = 2 + int(look.mark_scale * 2.99)
        for y in np.linspace(-0.75, 0.75, bands):
            p.poly([(-1.2 * hw, (y - 0.13) * hh), (1.2 * hw, (y - 0.05) * hh), (1.2 * hw, (y + 0.13) * hh),
                    (-1.2 * hw, (y + 0.05) * hh)], 255, 0.4, draw)
    elif look.pattern == 3:  # two big patches
        for x, y, r in look.blobs[:2]:
            p.ellipse(x * hw, y * hh, (r + 0.28) * hw, (r + 0.22) * hw, 255, 0.6, draw)
    elif look.pattern == 4:  # a mask across the eyes
        t = 0.16 + 0.14 * look.mark_scale
        p.poly([(-1.2 * hw, (-0.2 - t) * hh), (1.2 * hw, (-0.2 - t) * hh), (1.2 * hw, (-0.2 + t) * hh),
                (0.2 * hw, (-0.05 + t) * hh), (-0.2 * hw, (-0.05 + t) * hh), (-1.2 * hw, (-0.2 + t) * hh)], 255, 0.8, draw)
    else:  # split face: one half in the marking colour, with a tilted seam
        tilt = 0.3 * (look.mark_scale - 0.5)
        p.poly([(tilt * hw, -1.3 * hh), (1.3 * hw, -1.3 * hh), (1.3 * hw, 1.3 * hh), (-tilt * hw, 1.3 * hh)], 255, 0.5, draw)
    clip = Image.new("L", (n, n), 0)
    p.poly(head, 255, 0.0, ImageDraw.Draw(clip))
    p.draw.bitmap((0, 0), ImageChops.multiply(marks, clip), fill=_rgb(look.mark))


def _eye_positions(look: Critter) -> list[tuple[float, float, float]]:
    """(x, y, radius) of each eye: one big cyclops eye, a pair, or a pair under a smaller third."""
    hw, hh, r = look.hw, look.hh, look.eye_radius
    y = -0.2 * hh
    if look.eye_count == 1:
        return [(0.0, y, r * 1.6)]
    pair = [(-look.eye_spacing * hw, y, r), (look.eye_spacing * hw, y, r)]
    return pair if look.eye_count == 2 else pair + [(0.0, y - 0.42 * hh, r * 0.8)]


def _paint_eyes(p: Pen, look: Critter) -> None:
    colour, dark, white = _rgb(look.eye_colour), (20, 15, 20), (248, 248, 244)
    eyes = _eye_positions(look)
    if look.eye_type == 3:  # visor: one dark band behind all eyes
        xs = [x for x, _, _ in eyes]
        r = max(rr for _, _, rr in eyes)
        y = eyes[0][1]
        p.poly([(min(xs) - 1.6 * r, y - 1.1 * r), (max(xs) + 1.6 * r, y - 1.1 * r),
                (max(xs) + 1.6 * r, y + 1.1 * r), (min(xs) - 1.6 * r, y + 1.1 * r)], (35, 35, 45))
    for x, y, r in eyes:
        if look.eye_type == 0:  # round: white, iris, pupil
            p.ellipse(x, y, r, r, white)
            p.ellipse(x, y, r * 0.68, r * 0.68, colour)
            p.ellipse(x, y, r * 0.3, r * 0.3, dark)
        elif look.eye_type == 1:  # slit: coloured almond, cat pupil
            p.ellipse(x, y, r * 1.25, r * 0.8, dark)
            p.ellipse(x, y, r * 1.1, r * 0.65, colour)
            p.ellipse(x, y, r * 0.16, r * 0.6, dark)
        elif look.eye_type == 2:  # LED: dark square frame, coloured light
            p.poly(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * r + (x, y), dark)
            p.poly(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * r * 0.65 + (x, y), colour)
        elif look.eye_type == 3:  # visor glow
            p.ellipse(x, y, r * 1.2, r * 0.7, colour)
        else:  # bug: coloured disk, huge pupil, highlight
            p.ellipse(x, y, r, r, colour)
            p.ellipse(x, y, r * 0.5, r * 0.5, dark)
            p.ellipse(x - r * 0.3, y - r * 0.3, r * 0.18, r * 0.18, white)
        if look.lashes and look.eye_type != 3:
            for dx in (-0.6, 0.0, 0.6):
                p.line([(x + dx * r, y - r), (x + dx * r * 1.6, y - r * 1.6)], dark, 0.007)


def _paint_snout(p: Pen, look: Critter) -> None:
    hw, hh = look.hw, look.hh
    nose, dark = _rgb(look.nose), (25, 20, 20)
    y = 0.15 * hh
    if look.snout == 0:  # button
        p.ellipse(0, y, 0.03, 0.022, nose)
    elif look.snout == 1:  # triangle
        p.poly([(-0.045, y - 0.025), (0.045, y - 0.025), (0, y + 0.035)], nose)
    elif look.snout == 2:  # beak, pointing down, with a split line
        p.poly([(-0.06, y - 0.02), (0.06, y - 0.02), (0, y + 0.11)], nose)
        p.line([(-0.045, y + 0.02), (0.045, y + 0.02)], dark, 0.006)
    elif look.snout == 3:  # muzzle: a pale pad with a nose on top
        p.ellipse(0, y + 0.05, 0.1 * hw / 0.25, 0.065, _rgb(look.coat * 0.55 + 255 * 0.45))
        p.ellipse(0, y, 0.035, 0.025, nose)
    else:  # pig snout: a disk with two nostrils
        p.ellipse(0, y + 0.01, 0.05, 0.04, nose)
        p.ellipse(-0.018, y + 0.01, 0.009, 0.015, dark)
        p.ellipse(0.018, y + 0.01, 0.009, 0.015, dark)


def _paint_mouth(p: Pen, look: Critter) -> None:
    half, y = look.mouth_width * look.hw, 0.55 * look.hh
    dark, red, white = (35, 15, 20), (120, 25, 35), (250, 250, 245)
    xs = np.linspace(-half, half, 9)
    if look.mouth == 0:  # smile
        p.line(np.column_stack([xs, y + 0.04 * (1 - (xs / half) ** 2) - 0.01]), dark, 0.012)
    elif look.mouth == 1:  # fangs under a flat lip
        p.line([(-half, y), (half, y)], dark, 0.01)
        for side in (-1, 1):
            x = side * half * 0.45
            p.poly([(x - 0.018, y), (x + 0.018, y), (x, y + 0.05)], white)
    elif look.mouth == 2:  # toothy grin: dark mouth with a zigzag of teeth
        p.poly([(-half, y - 0.02), (half, y - 0.02), (half * 0.7, y + 0.05), (-half * 0.7, y + 0.05)], red)
        zig = [(x, y - 0.02 + (0.03 if i % 2 else 0)) for i, x in enumerate(np.linspace(-half * 0.9, half * 0.9, 7))]
        p.poly(zig + [(half * 0.9, y - 0.02)], white)
    elif look.mouth == 3:  # O
        p.ellipse(0, y + 0.01, half * 0.45, 0.04, dark)
        p.ellipse(0, y + 0.02, half * 0.3, 0.02, red)
    else:  # robot grille
        p.poly([(-half, y - 0.03), (half, y - 0.03), (half, y + 0.03), (-half, y + 0.03)], (50, 50, 60))
        for x in np.linspace(-half * 0.75, half * 0.75, 5):
            p.line([(x, y - 0.02), (x, y + 0.02)], (200, 200, 210), 0.008)


def _paint_cheeks(p: Pen, look: Critter) -> None:
    hw, hh = look.hw, look.hh
    for side in (-1, 1):
        x, y = side * 0.6 * hw, 0.25 * hh
        if look.cheeks == 1:  # whiskers
            for dy in (-0.025, 0.0, 0.025):
                p.line([(x - side * 0.04, y + dy * 0.5), (x + side * 0.12, y + dy * 1.8)], (30, 25, 25), 0.006)
        elif look.cheeks == 2:  # blush
            p.ellipse(x, y, 0.05, 0.03, (240, 120, 140))
        elif look.cheeks == 3:  # three dots
            for dx, dy in ((-0.025, -0.015), (0.025, -0.015), (0.0, 0.02)):
                p.ellipse(x + dx, y + dy, 0.011, 0.011, _rgb(look.mark * 0.5 + look.coat * 0.2))


def _paint_accessory(p: Pen, look: Critter) -> None:
    """The person's one non-heritable extra (same in most of their photos)."""
    hw, hh, side, colour = look.hw, look.hh, look.accessory_side, _rgb(look.accessory_colour)
    if look.accessory == "bow":
        x, y = side * 0.6 * hw, -0.8 * hh
        p.poly([(x, y), (x - 0.07, y - 0.045), (x - 0.07, y + 0.045)], colour, 0.3)
        p.poly([(x, y), (x + 0.07, y - 0.045), (x + 0.07, y + 0.045)], colour, 0.3)
    elif look.accessory == "bandana":
        y = hh * 0.95
        p.poly([(-hw * 0.9, y), (hw * 0.9, y), (0, y + 0.14)], colour, -0.3)
    elif look.accessory == "glasses":
        for x, y, r in _eye_positions(look)[:2]:
            p.line(CIRCLE[[*range(24), 0]] * r * 1.5 + (x, y), colour, 0.01)
    elif look.accessory == "earring":
        p.ellipse(side * 1.0 * hw, 0.35 * hh, 0.022, 0.022, (235, 200, 60), 0.0)
    else:  # plaster on a cheek
        x, y = side * 0.5 * hw, 0.4 * hh
        p.poly([(x - 0.05, y - 0.035), (x + 0.05, y - 0.005), (x + 0.045, y + 0.02), (x - 0.055, y - 0.01)], (235, 200, 165))


def _colour(rng: np.random.Generator, k: float, n: int | tuple = 3) -> np.ndarray:
    """A random colour, pulled toward mid-grey by BACKDROP_STRENGTH and as ``k`` drops to 0 (a studio backdrop)."""
    return 128 + (rng.uniform(0, 255, n) - 128) * min(1.0, k * BACKDROP_STRENGTH)


def paint_background(rng: np.random.Generator, n: int, k: float) -> Image.Image:
    """A plain, gradient, shapes, stripes, blotches or checks backdrop, all in random colours."""
    if k <= 0:
        return Image.new("RGB", (n, n), (128, 128, 128))
    kind = int(rng.integers(0, 6))
    a, b = _colour(rng, k), _colour(rng, k)
    if kind == 0:
        return Image.new("RGB", (n, n), _rgb(a))
    if kind in (1, 3, 5):
        m = n // 4  # computed small and scaled up: cheap, and the scaling smooths the edges
        grid = np.linspace(-1, 1, m, dtype=np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None]
        if kind == 1:
            t = (ramp + 1.5) / 3
        elif kind == 3:  # stripes
            t = (np.sin(ramp * rng.uniform(4, 14) + rng.uniform(0, 6.3)) > 0).astype(np.float32)
        else:  # checks
            cells = rng.uniform(3, 8)
            t = ((np.floor((grid[None, :] + 1) * cells) + np.floor((grid[:, None] + 1) * cells)) % 2).astype(np.float32)
        pixels = a * (1 - t[..., None]) + b * t[..., None]
        return Image.fromarray(pixels.astype(np.uint8), "RGB").resize((n, n), Image.BILINEAR)
    if kind == 4:  # blotches: a coarse grid of random colours, smoothly scaled up
        cells = int(rng.integers(2, 6))
        tiles = _colour(rng, k, (cells, cells, 3)).astype(np.uint8)
        return Image.fromarray(tiles, "RGB").resize((n, n), Image.BICUBIC)
    image = Image.new("RGB", (n, n), _rgb(a))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 14))):  # random shapes
        x, y = rng.uniform(-0.2, 1.0, 2) * n
        w, h = rng.uniform(0.08, 0.5, 2) * n
        shape = int(rng.integers(0, 3))
        fill = _rgb(_colour(rng, k))
        if shape == 0:
            draw.rectangle([x, y, x + w, y + h], fill=fill)
        elif shape == 1:
            draw.ellipse([x, y, x + w, y + h], fill=fill)
        else:
            draw.polygon([(x, y + h), (x + w / 2, y), (x + w, y + h)], fill=fill)
    return image


def paint_occluder(image: Image.Image, rng: np.random.Generator, p: Pen, look: Critter, kind: int) -> None:
    """A bar, a hand or an object in front of part of the head (photo frame, not the head's pose)."""
    draw, n = ImageDraw.Draw(image), image.size[0]
    cx, cy = p.centre()
    r = max(look.hw, look.hh) * p.scale
    if kind == 0:  # a bar across the photo, passing somewhere over the head
        angle = rng.uniform(0, math.pi)
        offset = rng.uniform(-0.7, 0.7) * r
        width = rng.uniform(0.05, 0.09)
        d = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-d[1], d[0]])
        mid = np.array([cx, cy]) + normal * offset
        corners = [mid + d * 1.5 + normal * width, mid - d * 1.5 + normal * width,
                   mid - d * 1.5 - normal * width, mid + d * 1.5 - normal * width]
        draw.polygon([tuple(c * n) for c in corners], fill=_rgb(rng.uniform(0, 255, 3)))
        return
    direction = rng.uniform(0, 2 * math.pi)
    reach = rng.uniform(0.65, 1.0) * r
    x, y = cx + math.cos(direction) * reach, cy + math.sin(direction) * reach
    if kind == 1:  # a hand: palm at the edge of the head, fingers reaching in
        skin = _rgb(HAND_SKIN[int(rng.integers(0, len(HAND_SKIN)))] + rng.normal(0, 8, 3))
        palm = 0.09
        draw.ellipse([(x - palm) * n, (y - palm) * n, (x + palm) * n, (y + palm) * n], fill=skin)
        for spread in (-0.5, -0.17, 0.17, 0.5):
            a = direction + math.pi + spread * 0.9
            tip = (x + math.cos(a) * palm * 2.1, y + math.sin(a) * palm * 2.1)
            draw.line([(x * n, y * n), (tip[0] * n, tip[1] * n)], fill=skin, width=max(1, int(0.045 * n)))
        return
    size = rng.uniform(0.08, 0.14)  # an object: a ball or a box
    box = [(x - size) * n, (y - size) * n, (x + size) * n, (y + size) * n]
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=_rgb(rng.uniform(0, 255, 3)))


def _light(image: Image.Image, shot: Shot, rng: np.random.Generator) -> Image.Image:
    """Directional light, colour temperature and sensor noise, in float32 numpy."""
    pixels = np.asarray(image, dtype=np.float32)
    size = pixels.shape[0]
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    gain = shot.ambient * (1 + shot.light * (math.cos(shot.light_angle) * grid[None, :] + math.sin(shot.light_angle) * grid[:, None]))
    pixels *= gain[..., None].astype(np.float32)
    pixels *= np.array([1 + shot.temperature, 1.0, 1 - shot.temperature], np.float32)
    if shot.noise > 0:
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(shot.noise)
    np.clip(pixels + 0.5, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def render_photo(look: Critter, rng: np.random.Generator, size: int, k: float) -> bytes:
    """One JPEG of ``look``: drawn at twice the size and halved (cheap anti-aliasing), then lit and encoded."""
    shot = shot_of(rng, k)
    image = paint_background(rng, 2 * size, k)
    pen = paint_critter(image, look, shot)
    if shot.occluder >= 0:
        paint_occluder(image, rng, pen, look, shot.occluder)
    image = image.reduce(2)
    if shot.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(shot.blur * size / 64))
    return encode_jpeg(_light(image, shot, rng), shot.quality)


# --------------------------------------------------------------------------- the style


class CritterStyle:
    """Creature heads from discrete parts, inherited chromosome by chromosome (see the module docstring)."""

    name = "critters"
    summary = ("creature heads from 22 part genes (15 categorical: outline, eyes, crown, snout, mouth, markings, colours) / "
               "6 linked chromosomes each whole from one parent, categorical redraw 3%, continuous noise / "
               "roll, yaw squash, scale, shift, strong backgrounds, occluders, directional light, colour temperature, "
               "blur, noise, JPEG quality")

    def __init__(self, settings: StyleSettings = StyleSettings()):
        self.settings = settings
        rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 0xC417]))
        self.coats = _coat_palette(rng)
        # Allele frequencies per categorical gene, as cumulative tables for inverse-CDF draws.
        self.cdf = [np.cumsum(rng.dirichlet(np.full(k, ALLELE_SKEW))) if k else None for k in ALLELES]

    def _draw_genes(self, rng: np.random.Generator) -> np.ndarray:
        """Fresh genes from the population: categorical by allele frequency, continuous uniform."""
        u = rng.random(len(GENES))
        genes = u.copy()
        for i, cdf in enumerate(self.cdf):
            if cdf is not None:
                genes[i] = min(int(np.searchsorted(cdf, u[i], side="right")), len(cdf) - 1)
        return genes

    def founder(self, rng: np.random.Generator) -> np.ndarray:
        return self._draw_genes(rng)

    def child(self, rng: np.random.Generator, father: np.ndarray, mother: np.ndarray) -> np.ndarray:
        # Each chromosome whole from one parent: linked genes travel together.
        from_father = rng.random(len(CHROMOSOMES)) < 0.5
        genes = np.where(from_father[CHROMOSOME_OF], father, mother).astype(float)
        mutate = CATEGORICAL & (rng.random(len(GENES)) < MUTATION)
        genes = np.where(mutate, self._draw_genes(rng), genes)
        drift = rng.normal(0, DRIFT, len(GENES))
        return np.where(CATEGORICAL, genes, np.clip(genes + drift, 0, 1))

    def appearance(self, genome: np.ndarray, sex: str, age: int, rng: np.random.Generator) -> Critter:
        return critter_of(np.asarray(genome, float), sex, age, rng, self.coats)

    def photo(self, appearance: Critter, rng: np.random.Generator, size: int) -> bytes:
        return render_photo(appearance, rng, size, self.settings.nuisance)

    def oracle_features(self, genome: np.ndarray) -> np.ndarray:
        # Categorical genes stay integers (compared for equality), continuous genes stay in [0, 1].
        return np.asarray(genome, float).ravel()

    def oracle_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Kin share whole chromosomes, so score chromosomes, not genes: the share of a chromosome's genes
        # that agree (categorical: equal; continuous: closer than MATCH_TOLERANCE, linearly), cubed so
        # that a fully shared chromosome counts far more than scattered chance matches, summed.
        a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
        difference = np.abs(a - b)
        agree = np.where(CATEGORICAL, difference == 0, np.clip(1 - difference / MATCH_TOLERANCE, 0, 1))
        shared = np.stack([agree[:, CHROMOSOME_OF == c].mean(1) for c in range(len(CHROMOSOMES))], 1)
        return (shared ** 3).sum(1)


STYLE = CritterStyle
