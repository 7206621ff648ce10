"""The ``faces`` style, the default: cartoon faces from 35 named traits.

Every founder gets random traits (face shape, skin/hair/eye colours, feature geometry...); a child takes each
trait from one parent or a blend of both, plus a small mutation. Each photo of a person then adds nuisance that
is drawn independently per photo (pose, scale, lighting, background, clothes, expression, blur, JPEG quality), so
raw pixels say little while the traits stay visible at 64x64.

Like every module here it exports ``STYLE`` (``kinship.synth_style.Style``); the pedigree and the writer are
``kinship.synth``'s, which re-exports this module's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kinship.synth_style import StyleSettings, encode_jpeg, negative_distance

TRAITS = (
    "face_width", "face_length", "jaw", "skin_tone", "skin_warmth", "hair_tone", "hair_style",
    "hair_volume", "hairline", "greying", "eye_spacing", "eye_size", "eye_height", "eye_colour",
    "nose_length", "nose_width", "mouth_width", "lip_thickness", "brow_thickness", "brow_angle",
    "ear_size", "freckles", "mole", "mole_x", "mole_y", "cheeks", "eye_shape", "forelock", "lip_colour",
    "unibrow", "hair_texture", "birthmark", "birthmark_x", "birthmark_y", "birthmark_size",
)
T = {name: index for index, name in enumerate(TRAITS)}

# Skin spans light to mid-brown only: skin colour covers much of the photo, and a wider range lets
# raw-pixel similarity tell families apart by colour alone (the CNN has many other traits).
SKIN = np.array([(236, 192, 158), (205, 150, 108), (150, 100, 66)], float)
HAIR = np.array([(22, 18, 16), (62, 40, 26), (120, 78, 44), (170, 88, 40), (214, 180, 112), (236, 216, 160)], float)
EYES = np.array([(60, 36, 20), (110, 70, 30), (120, 110, 50), (70, 120, 70), (60, 110, 180), (130, 140, 150)], float)
GREY = np.array((205, 205, 200), float)
FORELOCK = (236, 232, 222)
LIPS = np.array([(214, 140, 140), (196, 84, 96), (150, 60, 60), (120, 70, 80)], float)
HAIR_STYLES = ("short", "curly", "parted", "long")
FOUNDER_SPREAD = 0.7  # founders' traits ~ Beta(0.7, 0.7): U-shaped, so strangers differ visibly
POLYGENIC = np.isin(TRAITS, ("skin_tone", "skin_warmth", "hair_tone", "eye_colour", "face_width", "face_length"))
BLEND = 0.0  # chance that a child's trait is the mean of the parents' rather than one parent's


class Person(Protocol):
    """What ``face_of`` reads of a person: a ``kinship.synth.Member``, or the stand-in ``FacesStyle`` builds (this
    module does not import the pedigree, which imports it)."""

    traits: np.ndarray
    sex: str
    age: int


@dataclass(frozen=True)
class _Sitter:
    """A person as ``FacesStyle.appearance`` knows one: the genome, sex and age (all ``face_of`` reads)."""

    traits: np.ndarray
    sex: str
    age: int


def _palette(colours: np.ndarray, t: float) -> np.ndarray:
    position = float(np.clip(t, 0.0, 1.0)) * (len(colours) - 1)
    low = min(int(position), len(colours) - 2)
    return colours[low] + (colours[low + 1] - colours[low]) * (position - low)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(colour), 0, 255))


@dataclass
class Face:
    """The fixed look of one person: traits turned into geometry and colours (unit = canvas width)."""

    half_width: float
    half_height: float
    jaw_power: float
    skin: np.ndarray
    hair: np.ndarray
    eyes: np.ndarray
    style: str
    hair_volume: float
    hairline: float
    eye_spacing: float
    eye_radius: float
    eye_height: float
    eye_openness: float
    nose_length: float
    nose_width: float
    mouth_width: float
    lips: float
    lip_colour: np.ndarray
    brow_thickness: float
    unibrow: bool
    brow_angle: float
    ear_radius: float
    freckles: list[tuple[float, float]]
    mole: tuple[float, float] | None
    birthmark: tuple[float, float, float] | None  # x, y (face units) and radius (canvas units)
    cheeks: float
    forelock: bool
    hair_texture: float  # 0 = smooth; above 0 strands are drawn, denser with the value
    age_lines: float
    beard: str | None
    glasses: bool
    sex: str
    child: bool


def face_of(member: Person, rng: np.random.Generator) -> Face:
    """Turn traits (plus age, sex and a few non-heritable extras from ``rng``) into a ``Face``.

    Ranges are wide on purpose: a trait must still show at 64x64 pixels to be learnable.
    """
    t, age, female = member.traits, member.age, member.sex == "f"
    child = age < 13
    jaw = 1.4 + 2.2 * t[T["jaw"]] + (-0.35 if female else 0.25)
    return Face(
        half_width=0.19 + 0.1 * t[T["face_width"]], half_height=0.25 + 0.1 * t[T["face_length"]],
        jaw_power=2.0 + (jaw - 2.0) * (0.5 if child else 1.0), **_colours(t, age),
        style=HAIR_STYLES[min(3, int(t[T["hair_style"]] * 4))], hair_volume=t[T["hair_volume"]],
        hairline=float(t[T["hairline"]] + (max(0, age - 40) / 40 if not female and t[T["hair_volume"]] < 0.45 else 0)),
        eye_spacing=0.22 + 0.24 * t[T["eye_spacing"]], eye_radius=(0.025 + 0.045 * t[T["eye_size"]]) * (1.2 if child else 1.0),
        eye_height=-0.18 + 0.16 * t[T["eye_height"]], eye_openness=0.45 + 0.5 * t[T["eye_shape"]],
        nose_length=(0.15 + 0.25 * t[T["nose_length"]]) * (0.8 if child else 1.0), nose_width=0.07 + 0.2 * t[T["nose_width"]],
        mouth_width=0.18 + 0.3 * t[T["mouth_width"]], lips=0.02 + 0.08 * t[T["lip_thickness"]] + (0.012 if female else 0),
        brow_thickness=(0.02 + 0.09 * t[T["brow_thickness"]]) * (0.7 if female else 1.0), unibrow=t[T["unibrow"]] > 0.75,
        brow_angle=-0.5 + 1.0 * t[T["brow_angle"]], ear_radius=0.02 + 0.06 * t[T["ear_size"]],
        freckles=_freckles(rng, t[T["freckles"]]),
        mole=(float(t[T["mole_x"]] - 0.5), float(t[T["mole_y"]] * 0.6 - 0.1)) if t[T["mole"]] > 0.65 else None,
        birthmark=(float(t[T["birthmark_x"]] * 1.2 - 0.6), float(t[T["birthmark_y"]] * 0.9 - 0.5),
                   0.025 + 0.03 * float(t[T["birthmark_size"]])) if t[T["birthmark"]] > 0.75 else None,
        cheeks=float(t[T["cheeks"]]), forelock=t[T["forelock"]] > 0.8,
        hair_texture=max(0.0, float(t[T["hair_texture"]]) - 0.4) / 0.6,
        age_lines=float(np.clip((age - 32) / 40, 0.0, 1.0)),
        beard=_beard(rng) if not female and age >= 20 else None, glasses=age > 8 and rng.random() < 0.15,
        sex=member.sex, child=child,
    )


def _colours(t: np.ndarray, age: int) -> dict:
    # Hair greys with age (earlier with the "greying" trait) but keeps some of its colour.
    grey = np.clip((age - 38 - 20 * t[T["greying"]]) / 30, 0.0, 0.65)
    warm = (t[T["skin_warmth"]] - 0.5) * np.array([14.0, 4.0, -14.0])
    skin = _palette(SKIN, t[T["skin_tone"]]) + warm
    return {
        "skin": skin, "hair": _palette(HAIR, t[T["hair_tone"]]) * (1 - grey) + GREY * grey,
        "eyes": _palette(EYES, t[T["eye_colour"]]), "lip_colour": skin * 0.4 + _palette(LIPS, t[T["lip_colour"]]) * 0.6,
    }


def _freckles(rng: np.random.Generator, trait: float) -> list[tuple[float, float]]:
    count = int(trait**2 * 30) if trait > 0.45 else 0
    return [(float(x), float(y)) for x, y in rng.uniform([-0.55, -0.05], [0.55, 0.3], (count, 2))]


def _beard(rng: np.random.Generator) -> str | None:
    return ("beard", "moustache", "stubble", None, None, None, None, None)[int(rng.integers(0, 8))]


@dataclass
class Shot:
    """Per-photo nuisance: nothing here is shared between photos of a person or of a family."""

    angle: float
    scale: float
    shift: tuple[float, float]
    yaw: float
    smile: float
    mouth_open: float
    brow_raise: float
    clothes: np.ndarray
    glasses: bool
    brightness: float
    contrast: float
    cast: np.ndarray
    side_light: tuple[float, float]
    blur: float
    noise: float
    quality: int


def _around(rng: np.random.Generator, centre: float, spread: float, k: float, n: int | None = None):
    """``centre`` plus uniform noise of half-width ``spread * k`` (k = the nuisance level)."""
    return centre + rng.uniform(-spread, spread, n) * k


def shot_of(rng: np.random.Generator, face: Face, k: float = 1.0) -> Shot:
    """Draw one photo's pose, expression, lighting and camera settings; ``k`` scales the nuisance.

    The ranges at ``k = 1`` were tuned with the background's so that raw-pixel cosine similarity
    separates relatives from strangers only weakly (ROC AUC about 0.65 at 64x64) while a small CNN
    can still learn kinship from about 1,000 people: what varies strongly is around the face
    (background, clothes); pose and light on the face vary mildly, like the aligned crops of the
    real data set (stronger face nuisance cost the CNN far more than it cost raw pixels).
    """
    return Shot(
        angle=float(rng.normal(0, 1) * k), scale=float(_around(rng, 0.97, 0.02, k)),
        shift=(float(_around(rng, 0, 0.045, k)), float(_around(rng, 0, 0.03, k))),
        yaw=float(_around(rng, 0, 0.03, k)), smile=float(rng.uniform(-0.3, 1.0)),
        mouth_open=float(rng.uniform(0, 1)) if rng.random() < 0.3 else 0.0, brow_raise=float(rng.uniform(0, 1)),
        clothes=_wall(rng, k), glasses=face.glasses and rng.random() < 0.8,
        brightness=float(_around(rng, 0.97, 0.03, k)), contrast=float(_around(rng, 0.97, 0.03, k)),
        cast=_around(rng, 1, 0.015, k, 3),
        side_light=(float(_around(rng, 0, 0.04, k)), float(_around(rng, 0, 0.025, k))),
        blur=float(rng.uniform(0, 1.2)) if rng.random() < 0.5 else 0.0,
        noise=float(rng.uniform(1, 7)), quality=int(rng.integers(55, 96)),
    )


class Painter:
    """Draws one face on a transparent RGBA canvas; coordinates are fractions of the canvas."""

    def __init__(self, face: Face, shot: Shot, canvas: int):
        self.face, self.shot, self.n = face, shot, canvas
        self.image = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.cx, self.cy = 0.5, 0.47
        # A head turn moves the features sideways and narrows the face a little.
        self.hw = face.half_width * (1 - 0.25 * abs(shot.yaw))
        self.hh = face.half_height
        self.turn = shot.yaw * self.hw * 0.45

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (x * self.n, y * self.n)

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        """A point in face units (-1..1 across the face), moved by the head turn."""
        return (self.cx + self.turn * (1 - fy * fy) + fx * self.hw, self.cy + fy * self.hh)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill, outline=None, width: int = 0) -> None:
        box = [(x - rx) * self.n, (y - ry) * self.n, (x + rx) * self.n, (y + ry) * self.n]
        self.draw.ellipse(box, fill=fill, outline=outline, width=width)

    def polygon(self, points, fill) -> None:
        self.draw.polygon([self.px(x, y) for x, y in points], fill=fill)

    def line(self, points, fill, width: float) -> None:
        self.draw.line([self.px(x, y) for x, y in points], fill=fill, width=max(1, int(round(width * self.n))), joint="curve")

    def outline_points(self, grow: float = 1.0, steps: int = 72) -> list[tuple[float, float]]:
        """The head outline: a super-ellipse whose lower half is squarer or pointier by the jaw trait."""
        points = []
        for theta in np.linspace(0, 2 * math.pi, steps, endpoint=False):
            c, s = math.cos(theta), math.sin(theta)
            power = self.face.jaw_power if s > 0 else 2.2
            x = math.copysign(abs(c) ** (2 / power), c) * self.hw * grow
            y = math.copysign(abs(s) ** (2 / power), s) * self.hh * grow
            points.append((self.cx + x, self.cy + y))
        return points


def paint_subject(face: Face, shot: Shot, canvas: int) -> Image.Image:
    """The person (hair, clothes, head and features) on a transparent canvas, before pose."""
    p = Painter(face, shot, canvas)
    skin, hair = _rgb(face.skin), _rgb(face.hair)
    _paint_hair_back(p, hair)
    _paint_body(p, skin)
    _paint_ears(p, skin)
    p.polygon(p.outline_points(), skin)
    _paint_skin_marks(p)
    _paint_eyes_and_brows(p)
    _paint_beard(p, hair)  # before the mouth, which shows through a beard
    _paint_nose_and_mouth(p)
    _paint_hair_front(p, hair)
    if shot.glasses:
        _paint_glasses(p)
    return p.image


def _paint_hair_back(p: Painter, hair) -> None:
    volume = 1.06 + 0.14 * p.face.hair_volume
    p.ellipse(p.cx + p.turn * 0.3, p.cy - p.hh * 0.12, p.hw * volume, p.hh * (volume - 0.02), hair)
    if p.face.style == "long" or (p.face.style == "short" and p.face.sex == "f"):
        length = 0.9 if p.face.style == "long" and p.face.sex == "f" else 0.45
        top, bottom = p.cy - p.hh * 0.4, p.cy + p.hh * (0.3 + length)
        p.polygon([(p.cx - p.hw * volume, top), (p.cx + p.hw * volume, top),
                   (p.cx + p.hw * (volume + 0.1), bottom), (p.cx - p.hw * (volume + 0.1), bottom)], hair)


def _paint_body(p: Painter, skin) -> None:
    neck_top, neck_w = p.cy + p.hh * 0.6, p.hw * 0.45
    p.polygon([(p.cx - neck_w, neck_top), (p.cx + neck_w, neck_top), (p.cx + neck_w, 0.95), (p.cx - neck_w, 0.95)], skin)
    shoulders = p.cy + p.hh * 1.25
    p.ellipse(p.cx, shoulders + 0.25, p.hw * 2.6, 0.28, _rgb(p.shot.clothes))


def _paint_ears(p: Painter, skin) -> None:
    r = p.face.ear_radius
    for side in (-1, 1):
        shrink = 1 - 0.6 * max(0.0, side * p.shot.yaw) / 0.22  # the far ear hides behind the head
        x, y = p.at(side * 1.0, 0.05)
        p.ellipse(x, y, r * 0.7 * max(0.2, shrink), r * 1.3, skin)


def _paint_skin_marks(p: Painter) -> None:
    f = p.face
    shade = _rgb(f.skin * 0.78)
    blush = _rgb(f.skin * (1 - 0.25 * f.cheeks) + np.array([220, 90, 90]) * 0.25 * f.cheeks)
    for side in (-1, 1):
        x, y = p.at(side * 0.55, 0.28)
        p.ellipse(x, y, p.hw * 0.22, p.hh * 0.1, blush)
    for fx, fy in f.freckles:
        x, y = p.at(fx, fy)
        p.ellipse(x, y, 0.006, 0.006, _rgb(f.skin * 0.7))
    if f.mole is not None:
        x, y = p.at(*f.mole)
        p.ellipse(x, y, 0.013, 0.013, _rgb(f.skin * 0.35))
    if f.birthmark is not None:  # a large wine-coloured patch, in the same place in every carrier
        x, y = p.at(f.birthmark[0], f.birthmark[1])
        p.ellipse(x, y, f.birthmark[2] * 1.2, f.birthmark[2], _rgb(f.skin * 0.55 + np.array([150, 40, 60]) * 0.45))
    if f.age_lines > 0:
        for k in range(1 + int(f.age_lines * 3)):
            y = -0.62 + 0.09 * k
            p.line([p.at(-0.4, y), p.at(0, y - 0.02), p.at(0.4, y)], shade, 0.004 + 0.004 * f.age_lines)
        for side in (-1, 1):
            p.line([p.at(side * 0.3, 0.25), p.at(side * 0.42, 0.5)], shade, 0.005 * f.age_lines + 0.002)


def _paint_eyes_and_brows(p: Painter) -> None:
    f, s = p.face, p.shot
    brow_colour = _rgb(f.hair * 0.75)
    for side in (-1, 1):
        x, y = p.at(side * f.eye_spacing * 1.35, f.eye_height)
        r = f.eye_radius
        p.ellipse(x, y, r * 1.3, r * f.eye_openness * (1.0 if s.smile < 0.8 else 0.8), (245, 245, 240))
        p.ellipse(x, y, r * 0.75, r * 0.75, _rgb(f.eyes))
        p.ellipse(x, y, r * 0.3, r * 0.3, (15, 12, 12))
        lift = 0.1 + 0.25 * s.brow_raise
        inner, outer = p.at(side * f.eye_spacing * 0.55, f.eye_height - lift), p.at(side * (f.eye_spacing * 1.35 + 0.32), f.eye_height - lift)
        inner = (inner[0], inner[1] + f.brow_angle * 0.03)
        outer = (outer[0], outer[1] - f.brow_angle * 0.03)
        p.line([inner, outer], brow_colour, f.brow_thickness * 0.5)
        if f.unibrow and side == 1:
            p.line([inner, p.at(-f.eye_spacing * 0.55, f.eye_height - lift + f.brow_angle * 0.03)], brow_colour, f.brow_thickness * 0.35)


def _nose_tip(face: Face) -> float:
    return face.eye_height + 0.08 + face.nose_length * 1.2


def _mouth_y(face: Face) -> float:
    tip = _nose_tip(face)
    return tip + (1 - tip) * 0.36


def _paint_nose_and_mouth(p: Painter) -> None:
    f, s = p.face, p.shot
    tip_y = _nose_tip(f)
    wing = f.nose_width * 1.4
    bridge = [p.at(-0.04, f.eye_height + 0.08), p.at(0.04, f.eye_height + 0.08)]
    p.polygon(bridge + [p.at(wing, tip_y), p.at(-wing, tip_y)], _rgb(f.skin * 0.9))
    p.line([p.at(-wing, tip_y), p.at(0, tip_y + 0.04), p.at(wing, tip_y)], _rgb(f.skin * 0.65), 0.007)
    _paint_mouth(p, _mouth_y(f))


def _paint_mouth(p: Painter, y: float) -> None:
    f, s = p.face, p.shot
    half = f.mouth_width * (1 + 0.12 * s.smile)
    xs = np.linspace(-half, half, 11)
    bulge = 1 - (xs / half) ** 2  # 1 in the middle, 0 at the corners
    corners = -0.1 * s.smile * (1 - bulge)  # a smile lifts the corners
    gap = 0.08 * s.mouth_open  # an open mouth parts the lips in the middle
    upper = [p.at(x, y + c - (0.6 * f.lips + 0.3 * gap) * b) for x, c, b in zip(xs, corners, bulge)]
    lower = [p.at(x, y + c + (f.lips + gap) * b) for x, c, b in zip(xs, corners, bulge)]
    p.polygon(upper + lower[::-1], _rgb(f.lip_colour))
    if s.mouth_open > 0.3:
        top = [p.at(x, y + c - 0.3 * gap * b) for x, c, b in zip(xs, corners, bulge)]
        bottom = [p.at(x, y + c + 0.7 * gap * b) for x, c, b in zip(xs, corners, bulge)]
        p.polygon(top + bottom[::-1], (70, 25, 25))
    else:
        p.line([p.at(x, y + c) for x, c in zip(xs, corners)], (90, 35, 35), 0.005)


def _paint_beard(p: Painter, hair) -> None:
    kind = p.face.beard
    if kind is None:
        return
    if kind in ("beard", "stubble"):
        colour = hair if kind == "beard" else _rgb(p.face.skin * 0.6 + p.face.hair * 0.4)
        chin = [pt for pt in p.outline_points(1.02, 48) if pt[1] > p.cy + p.hh * 0.15]
        chin.sort(key=lambda pt: pt[0])
        y = _mouth_y(p.face)
        p.polygon(chin[::-1] + [p.at(-0.55, 0.15), p.at(-0.3, y + 0.12), p.at(0.3, y + 0.12), p.at(0.55, 0.15)], colour)
        p.polygon(chin, colour)
    if kind in ("beard", "moustache"):
        y = (_nose_tip(p.face) + _mouth_y(p.face)) / 2
        p.line([p.at(-p.face.mouth_width * 0.9, y + 0.06), p.at(0, y), p.at(p.face.mouth_width * 0.9, y + 0.06)], hair, 0.018)


def _paint_hair_front(p: Painter, hair) -> None:
    f = p.face
    volume = 1.06 + 0.14 * f.hair_volume
    line_y = -0.82 + 0.35 * min(1.0, f.hairline)  # face units: the lower, the more forehead is covered
    top, cut = p.cy - p.hh * volume, p.cy + p.hh * line_y
    if f.style == "curly":
        for k, theta in enumerate(np.linspace(math.pi * 1.05, math.pi * 1.95, 9)):
            x = p.cx + p.turn * 0.5 + math.cos(theta) * p.hw * volume
            y = p.cy - p.hh * 0.15 + math.sin(theta) * p.hh * volume * 0.95
            colour = FORELOCK if f.forelock and k == 3 else hair
            p.ellipse(x, max(y, top + 0.02), p.hw * 0.32, p.hh * 0.22, colour)
        return
    slant = 0.12 if f.style == "parted" else 0.0
    width = p.hw * volume
    points = [(p.cx - width, cut + slant * p.hh), (p.cx - width * 0.7, top + 0.03), (p.cx, top),
              (p.cx + width * 0.7, top + 0.03), (p.cx + width, cut - slant * p.hh)]
    if f.style == "parted":
        points.insert(3, (p.cx + width * 0.25, cut - 0.3 * p.hh))
    shift = p.turn * 0.4
    p.polygon([(x + shift, y) for x, y in points], hair)
    if f.hair_texture > 0:  # strands: wavy or coarse hair
        strand = _rgb(np.asarray(hair) * 0.6)
        for x in np.linspace(-0.8, 0.8, 3 + int(8 * f.hair_texture)):
            p.line([(p.cx + shift + x * width * 0.8, top + 0.04), (p.cx + shift + x * width, cut - 0.01)], strand, 0.006)
    if f.forelock:  # a white forelock, a dominant trait in real families
        x = p.cx + shift - width * 0.35
        p.polygon([(x - 0.03, top + 0.03), (x + 0.03, top + 0.02), (x + 0.05, cut), (x - 0.02, cut)], FORELOCK)


def _paint_glasses(p: Painter) -> None:
    f = p.face
    frame = (30, 30, 30)
    r = f.eye_radius * 2.1
    for side in (-1, 1):
        x, y = p.at(side * f.eye_spacing * 1.35, f.eye_height)
        p.ellipse(x, y, r, r * 0.8, None, outline=frame, width=max(1, p.n // 110))
    left, right = p.at(-f.eye_spacing * 1.35 + 0.0, f.eye_height), p.at(f.eye_spacing * 1.35, f.eye_height)
    p.line([(left[0] + r, left[1]), (right[0] - r, right[1])], frame, 0.006)


def _colour(rng: np.random.Generator, grey_spread: float, tint: float) -> np.ndarray:
    """A random grey level around mid-grey, tinted by a random colour of strength ``tint``."""
    return _around(rng, 128, grey_spread, 1.0) + rng.normal(0, tint, 3)


def _wall(rng: np.random.Generator, k: float) -> np.ndarray:
    return _colour(rng, 30 * k, 12.5 * k)


def paint_background(rng: np.random.Generator, canvas: int, k: float = 1.0) -> Image.Image:
    """A plain wall, a gradient, or a cluttered room: picked and coloured per photo.

    Backgrounds are muted: they cover half the picture, so colourful ones would drown the faces
    in raw-pixel similarity (and a per-family background would leak the answer: none is shared).
    """
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return Image.new("RGB", (canvas, canvas), _rgb(_wall(rng, k)))
    if kind == 1:
        a, b = _wall(rng, k), _wall(rng, k)
        angle = rng.uniform(0, 2 * math.pi)
        grid = np.linspace(-0.5, 0.5, canvas)
        ramp = np.clip(math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None] + 0.5, 0, 1)[..., None]
        return Image.fromarray((a * (1 - ramp) + b * ramp).astype(np.uint8), "RGB")
    wall = _wall(rng, k)
    image = Image.new("RGB", (canvas, canvas), _rgb(wall))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 12))):
        x, y = rng.uniform(-0.2, 1.0, 2) * canvas
        w, h = rng.uniform(0.1, 0.6, 2) * canvas
        shape = draw.rectangle if rng.random() < 0.6 else draw.ellipse
        shape([x, y, x + w, y + h], fill=_rgb(wall + rng.normal(0, 25 * k, 3)))  # furniture, low contrast
    return image


def render_photo(face: Face, rng: np.random.Generator, size: int, nuisance: float = 1.0) -> bytes:
    """One JPEG photo of ``face``; all its nuisance comes from ``rng``."""
    shot = shot_of(rng, face, nuisance)
    # Drawn and posed at twice the size, then halved: cheap anti-aliasing (NEAREST skips the
    # premultiplied-alpha round trip that a smoothing filter costs on RGBA).
    subject = paint_subject(face, shot, 2 * size)
    subject = subject.transform(subject.size, Image.AFFINE, _pose_matrix(shot, 2 * size), resample=Image.NEAREST).reduce(2)
    image = paint_background(rng, size, nuisance)
    image.paste(subject, (0, 0), subject)
    image = _light(image, shot, rng)
    if shot.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(shot.blur * size / 224))
    return encode_jpeg(image, shot.quality)


def _pose_matrix(shot: Shot, canvas: int) -> tuple[float, ...]:
    # PIL wants the inverse map: output pixel -> input pixel, about the canvas centre.
    c = canvas / 2
    cos, sin = math.cos(math.radians(shot.angle)) / shot.scale, math.sin(math.radians(shot.angle)) / shot.scale
    tx, ty = c + shot.shift[0] * canvas, c + shot.shift[1] * canvas
    return (cos, sin, c - cos * tx - sin * ty, -sin, cos, c + sin * tx - cos * ty)


def _light(image: Image.Image, shot: Shot, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    size = pixels.shape[0]
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    # Light falls off across the photo (a lamp on one side), scaled by brightness and contrast.
    gain = (1 + shot.side_light[0] * grid[None, :] + shot.side_light[1] * grid[:, None]) * np.float32(shot.brightness * shot.contrast)
    pixels += np.float32(128 * (1 - shot.contrast) / shot.contrast)
    pixels *= gain[..., None]
    pixels *= shot.cast.astype(np.float32)
    # Sensor grain in luminance only: a third of the random numbers, the same look.
    pixels += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(shot.noise)
    np.clip(pixels + 0.5, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


class FacesStyle:
    """The default style: cartoon faces from 35 named traits (see the module docstring)."""

    name = "faces"
    summary = ("face parts from 35 named traits / each trait from one parent, colours polygenic, small mutation / "
               "background, clothes, mild pose and light, blur, noise, JPEG quality")

    def __init__(self, settings: StyleSettings = StyleSettings()):
        self.settings = settings

    def founder(self, rng: np.random.Generator) -> np.ndarray:
        # U-shaped: founders lean to the ends of each trait, so unrelated people differ visibly.
        return rng.beta(FOUNDER_SPREAD, FOUNDER_SPREAD, len(TRAITS))

    def child(self, rng: np.random.Generator, father: np.ndarray, mother: np.ndarray) -> np.ndarray:
        # Per trait: from the father, from the mother, or a blend; then a small mutation.
        pick = rng.random(len(TRAITS))
        blend = (father + mother) / 2
        single = (1 - BLEND) / 2
        traits = np.where(pick < single, father, np.where(pick < 2 * single, mother, blend))
        # Colour and size traits are polygenic: always a mix of both parents, like real skin tone.
        weight = rng.uniform(0.3, 0.7, len(TRAITS))
        traits = np.where(POLYGENIC, weight * father + (1 - weight) * mother, traits)
        return np.clip(traits + rng.normal(0.0, self.settings.mutation, len(TRAITS)), 0.0, 1.0)

    def appearance(self, genome: np.ndarray, sex: str, age: int, rng: np.random.Generator) -> Face:
        return face_of(_Sitter(genome, sex, age), rng)

    def photo(self, appearance: Face, rng: np.random.Generator, size: int) -> bytes:
        return render_photo(appearance, rng, size, self.settings.nuisance)

    def oracle_features(self, genome: np.ndarray) -> np.ndarray:
        return np.asarray(genome, float).ravel()

    def oracle_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return negative_distance(a, b)



STYLE = FacesStyle
