"""Procedural shapes: the data the tiny model is trained on, and the detectors that score it.

A scene is one or two flat-coloured shapes (circle, square, triangle) on a flat background.
Rendering has no anti-aliasing, so every pixel of a ground-truth image is exactly a palette
colour, and the detectors (nearest palette colour, connected components, fill ratio) are
close to exact on it; on generated images they measure whether the prompt was followed.

Pure numpy and PIL: no torch, so the dataset and the scoring can be used and tested alone.
Coordinates are fractions of the image side, origin at the top left, y pointing down.
"""

import re
from dataclasses import dataclass

import numpy as np

PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (250, 230, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (250, 140, 10),
    "purple": (140, 40, 180),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Centre of the shape's bounding box for each named position.
POSITIONS = {
    "center": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
CORNERS = ("top left", "top right", "bottom left", "bottom right")
HALF_SIZE = {"small": 0.12, "large": 0.21}  # half the bounding-box side
JITTER = 0.03  # uniform offset of a shape's centre, so positions are regions, not points

_RGB = np.array(list(PALETTE.values()), dtype=np.int32)  # [K, 3]


@dataclass(frozen=True)
class Scene:
    """What an image shows. `boxes` holds (cx, cy, half_size) per shape, as fractions."""

    background: str
    colour: str
    shape: str
    size: str
    count: int
    position: str | None  # None when count is 2: the two shapes sit in two random corners
    boxes: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class Detection:
    """What the detectors see in an image; None where there is nothing to see."""

    background: str
    shape_colour: str | None
    shape_class: str | None
    position: str | None
    count: int


@dataclass(frozen=True)
class Expected:
    """The attributes a prompt names; None for those it leaves open."""

    background: str | None = None
    shape_colour: str | None = None
    shape_class: str | None = None
    position: str | None = None
    count: int | None = None
    size: str | None = None


# ---------------------------------------------------------------------------------------------
# Scenes and rendering


def sample_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random scene: two shapes in one image a fifth of the time."""
    background = COLOURS[rng.integers(len(COLOURS))]
    colour = rng.choice([c for c in COLOURS if c != background])
    shape = SHAPES[rng.integers(len(SHAPES))]
    if rng.random() < 0.2:
        corners = rng.choice(len(CORNERS), size=2, replace=False)
        places = [POSITIONS[CORNERS[i]] for i in corners]
        size, count, position = "small", 2, None
    else:
        size = SIZES[rng.integers(len(SIZES))]
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        places, count = [POSITIONS[position]], 1
    half = HALF_SIZE[size]
    boxes = tuple(
        (float(x + rng.uniform(-JITTER, JITTER)), float(y + rng.uniform(-JITTER, JITTER)), half)
        for x, y in places
    )
    return Scene(str(background), str(colour), shape, size, count, position, boxes)


def shape_mask(shape: str, cx: float, cy: float, half: float, size: int) -> np.ndarray:
    """Boolean [size, size] mask of one shape; the triangle is isosceles, apex up."""
    coords = (np.arange(size) + 0.5) / size
    y, x = coords[:, None], coords[None, :]
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    if shape == "square":
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    if shape == "triangle":
        top = cy - half
        return (y >= top) & (y <= cy + half) & (np.abs(x - cx) <= (y - top) / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(scene: Scene, size: int = 128) -> np.ndarray:
    """The scene as a uint8 [size, size, 3] RGB image."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = PALETTE[scene.background]
    for cx, cy, half in scene.boxes:
        image[shape_mask(scene.shape, cx, cy, half, size)] = PALETTE[scene.colour]
    return image


# ---------------------------------------------------------------------------------------------
# Captions and prompts


def _noun(scene: Scene) -> str:
    return f"{scene.shape}s" if scene.count == 2 else scene.shape


def with_article(phrase: str) -> str:
    """'a red circle', 'an orange circle'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming the colour and shape, and at random the size, position, background."""
    words = [scene.colour, _noun(scene)]
    if scene.count == 1 and rng.random() < 0.5:
        words.insert(0, scene.size)
    words = ["two"] + words if scene.count == 2 else [with_article(" ".join(words))]
    extras = []
    if scene.position is not None and rng.random() < 0.7:
        corner = " corner" if scene.position != "center" and rng.random() < 0.5 else ""
        extras.append(f"in the {scene.position}{corner}")
    if rng.random() < 0.6:
        extras.append(f"on {with_article(scene.background)} background")
    rng.shuffle(extras)
    return " ".join(words + extras)


def full_caption(scene: Scene) -> str:
    """The caption that names every attribute of the scene, in a fixed order."""
    background = f"on {with_article(scene.background)} background"
    if scene.count == 2:
        return f"two {scene.colour} {_noun(scene)} {background}"
    return f"a {scene.size} {scene.colour} {scene.shape} in the {scene.position} {background}"


_COLOUR_RE = "|".join(COLOURS)
_POSITION_RE = "|".join(sorted(POSITIONS, key=len, reverse=True))


def parse_prompt(prompt: str) -> Expected:
    """The attributes a prompt in the caption language names (unknown words are ignored)."""
    text = prompt.lower()
    background = re.search(rf"\b({_COLOUR_RE}) background\b", text)
    if background:
        text = text[: background.start()] + text[background.end() :]
    colour = re.search(rf"\b({_COLOUR_RE})\b", text)
    shape = re.search(r"\b(circle|square|triangle)s?\b", text)
    position = re.search(rf"\b({_POSITION_RE})\b", text)
    size = re.search(r"\b(small|large)\b", text)
    count = 2 if re.search(r"\btwo\b", text) else 1 if re.search(r"\b(a|an|one)\b", text) else None
    return Expected(
        background=background.group(1) if background else None,
        shape_colour=colour.group(1) if colour else None,
        shape_class=shape.group(1) if shape else None,
        position=position.group(1) if position else None,
        count=count,
        size=size.group(1) if size else None,
    )


# ---------------------------------------------------------------------------------------------
# Detectors


def nearest_colour_index(image: np.ndarray) -> np.ndarray:
    """[H, W] index into COLOURS of the palette colour nearest to each pixel."""
    pixels = image[..., :3].astype(np.int32)  # [H, W, 3]
    distance = ((pixels[:, :, None, :] - _RGB[None, None]) ** 2).sum(-1)  # [H, W, K]
    return distance.argmin(-1)


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean mask: [H, W] int labels, -1 outside the mask."""
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        # Each pixel takes the smallest label among itself and its in-mask neighbours.
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.stack(
            [padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        )
        new = np.where(mask, neighbours.min(0), big)
        # Pointer jumping: follow each label to its own label, which converges in ~log steps.
        flat = new.ravel()
        new = np.where(mask, flat[np.minimum(new, big - 1)].reshape(h, w), big)
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def classify_shape(component: np.ndarray) -> str:
    """Circle, square or triangle from one component's boolean mask.

    In its bounding box an upright triangle is narrow at the top and fills about half; a
    square fills the four corners and a circle leaves them empty. Corners separate blurred
    squares from pixelated circles better than the fill ratio (pi/4 against 1) does.
    """
    rows = np.flatnonzero(component.any(1))
    cols = np.flatnonzero(component.any(0))
    box = component[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # [h, w]
    h, w = box.shape
    band = max(h // 4, 1)
    widths = box.sum(1)
    if box.mean() < 0.6 or widths[:band].mean() < 0.6 * widths[-band:].mean():
        return "triangle"
    ph, pw = max(round(0.2 * h), 1), max(round(0.2 * w), 1)
    corners = (box[:ph, :pw].mean() + box[:ph, -pw:].mean() + box[-ph:, :pw].mean() + box[-ph:, -pw:].mean()) / 4
    return "square" if corners >= 0.33 else "circle"


def majority_filter(mask: np.ndarray) -> np.ndarray:
    """A pixel stays set when at least 5 of the 9 pixels around it are: removes specks and
    one-pixel bridges, keeps flat regions and their corners almost as they are."""
    padded = np.pad(mask, 1, mode="edge").astype(np.int8)
    h, w = mask.shape
    votes = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return votes >= 5


def nearest_position(cx: float, cy: float) -> str:
    """The named position whose anchor is nearest to a point given as fractions."""
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)


def detect(image: np.ndarray, min_area: float = 0.004) -> Detection:
    """Background colour, shape colour, shape class, position and count seen in an image.

    - background: the most common nearest-palette colour along the border;
    - foreground: pixels whose nearest palette colour is not the background, cleaned by a 3x3
      majority vote and split into 4-connected components, ignoring specks smaller than `min_area` of the image or a
      quarter of the largest component;
    - shape colour and class: from the largest component; position: the centre of its
      bounding box (the triangle's centroid sits low, the box centre does not).
    """
    index = nearest_colour_index(image)  # [H, W]
    h, w = index.shape
    border = np.concatenate([index[0], index[-1], index[:, 0], index[:, -1]])
    background = int(np.bincount(border, minlength=len(COLOURS)).argmax())
    labels = label_components(majority_filter(index != background))
    ids, areas = np.unique(labels[labels >= 0], return_counts=True)
    keep = areas >= max(min_area * h * w, 0.25 * areas.max(initial=0))
    if not keep.any():
        return Detection(COLOURS[background], None, None, None, 0)
    largest = labels == ids[areas.argmax()]
    colour = int(np.bincount(index[largest], minlength=len(COLOURS)).argmax())
    rows = np.flatnonzero(largest.any(1))
    cols = np.flatnonzero(largest.any(0))
    cx = (cols[0] + cols[-1] + 1) / 2 / w
    cy = (rows[0] + rows[-1] + 1) / 2 / h
    return Detection(
        background=COLOURS[background],
        shape_colour=COLOURS[colour],
        shape_class=classify_shape(largest),
        position=nearest_position(cx, cy),
        count=int(keep.sum()),
    )
