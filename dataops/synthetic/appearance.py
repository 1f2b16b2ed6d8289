"""What a synthetic person wears: skin, hair, clothing colours and patterns, accessories. Colours are BGR floats."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from dataops.synthetic.sampling import pick

# Skin and hair tones, RGB (converted to BGR when sampled).
SKIN_RGB = (
    (255, 224, 196),
    (241, 194, 167),
    (234, 192, 134),
    (224, 172, 105),
    (198, 134, 66),
    (172, 120, 80),
    (141, 85, 36),
    (92, 56, 36),
)
HAIR_RGB = (
    (20, 17, 15),
    (45, 30, 22),
    (80, 55, 35),
    (120, 85, 50),
    (180, 140, 90),
    (225, 195, 140),
    (150, 60, 30),
    (160, 160, 160),
)
DENIM_RGB = ((55, 75, 120), (40, 55, 90), (85, 110, 150), (30, 35, 50))


def _bgr(rgb, rng: np.random.Generator, jitter: float = 0.06) -> tuple[float, float, float]:
    scale = rng.uniform(1 - jitter, 1 + jitter, size=3)
    r, g, b = (float(np.clip(c * s, 0, 255)) for c, s in zip(rgb, scale))
    return (b, g, r)


def random_colour(rng: np.random.Generator, muted: float = 0.4) -> tuple[float, float, float]:
    """A clothing colour: greys, whites and blacks with probability `muted`, else a saturated hue."""
    if rng.random() < muted:
        value, sat = rng.uniform(*pick(rng, ((0.08, 0.3), (0.35, 0.7), (0.75, 0.97)))), 0.05
    else:
        value, sat = rng.uniform(0.3, 0.95), rng.uniform(0.35, 0.95)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), sat * rng.uniform(0.6, 1.0), value)
    return (255.0 * b, 255.0 * g, 255.0 * r)


def shade(colour, factor: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, c * factor)) for c in colour)


@dataclass(frozen=True)
class Outfit:
    skin: tuple
    hair: tuple
    hair_style: str  # "short", "long", "bald", "cap"
    cap: tuple
    shirt: tuple
    shirt2: tuple  # second colour of the pattern
    pattern: str  # "plain", "hstripes", "vstripes", "checks", "two_tone"
    period: float  # pattern period, body units
    sleeves: str  # "none", "short", "long"
    left_sleeve: tuple  # sleeves are usually the shirt colour; sometimes each side has its own
    right_sleeve: tuple
    legwear: str  # "trousers", "shorts", "skirt"
    pants: tuple
    left_shoe: tuple
    right_shoe: tuple
    belt: tuple | None
    front: str  # chest detail seen from the front: "none", "logo", "buttons", "vneck", "zip"
    logo: tuple
    watch: bool  # on the left wrist
    bag_side: str | None  # "l" or "r": a shoulder bag hanging at that hip
    bag: tuple
    backpack: bool
    backpack_colour: tuple
    build: float  # girth multiplier


def sample_outfit(rng: np.random.Generator) -> Outfit:
    skin = _bgr(SKIN_RGB[rng.integers(len(SKIN_RGB))], rng)
    shirt = random_colour(rng)
    sleeve_diff = rng.random() < 0.2
    legwear = pick(rng, ("trousers", "shorts", "skirt"), (0.65, 0.2, 0.15))
    if legwear == "trousers" and rng.random() < 0.45:
        pants = _bgr(DENIM_RGB[rng.integers(len(DENIM_RGB))], rng, 0.1)
    else:
        pants = random_colour(rng, muted=0.55)
    shoe = random_colour(rng, muted=0.7)
    return Outfit(
        skin=skin,
        hair=_bgr(HAIR_RGB[rng.integers(len(HAIR_RGB))], rng, 0.1),
        hair_style=pick(rng, ("short", "long", "bald", "cap"), (0.5, 0.3, 0.08, 0.12)),
        cap=random_colour(rng),
        shirt=shirt,
        shirt2=random_colour(rng),
        pattern=pick(rng, ("plain", "hstripes", "vstripes", "checks", "two_tone"), (0.5, 0.2, 0.1, 0.1, 0.1)),
        period=float(rng.uniform(0.025, 0.06)),
        sleeves=pick(rng, ("none", "short", "long"), (0.1, 0.45, 0.45)),
        left_sleeve=random_colour(rng) if sleeve_diff else shirt,
        right_sleeve=random_colour(rng) if sleeve_diff else shirt,
        legwear=legwear,
        pants=pants,
        left_shoe=shoe,
        right_shoe=random_colour(rng, muted=0.7) if rng.random() < 0.1 else shoe,
        belt=random_colour(rng, muted=0.8) if rng.random() < 0.5 else None,
        front=pick(rng, ("none", "logo", "buttons", "vneck", "zip"), (0.3, 0.25, 0.15, 0.2, 0.1)),
        logo=random_colour(rng),
        watch=bool(rng.random() < 0.45),
        bag_side=pick(rng, ("l", "r")) if rng.random() < 0.2 else None,
        bag=random_colour(rng, muted=0.6),
        backpack=bool(rng.random() < 0.2),
        backpack_colour=random_colour(rng),
        build=float(rng.uniform(0.85, 1.2)),
    )
