"""Seeded grid scenes of coloured shapes and digits, rendered pixel-exactly.

Every object fills one cell of a ``rows x cols`` grid and is centred in it. With the default 28 px
cell, one cell is exactly one merged visual token of Qwen2.5-VL (patch 14, spatial merge 2), so a
probe that swaps visual tokens swaps whole objects. Pixels are computed with numpy masks over pixel
centres and a fixed 5x7 glyph table, not with Pillow's drawing or fonts, so a scene renders to the
same bytes on every Pillow version.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image

from frankenlab.errors import TaskError

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIGIT_GLYPHS",
    "RGB",
    "SHAPES",
    "Digit",
    "Obj",
    "Scene",
    "describe",
    "digit_ink",
    "random_scene",
    "render",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")

#: Fill colour of each colour name; saturated and far apart so a tiny vision tower separates them.
RGB = MappingProxyType(
    {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 90, 230), "yellow": (240, 200, 20)}
)
BACKGROUNDS = MappingProxyType({"white": (255, 255, 255), "dark": (24, 24, 32)})
_INK = MappingProxyType({"white": (0, 0, 0), "dark": (255, 255, 255)})

#: 5x7 bitmaps of the digits 0-9 ("#" = ink); our own table so digits never depend on a font.
DIGIT_GLYPHS: tuple[tuple[str, ...], ...] = (
    (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
)


@dataclass(frozen=True)
class Obj:
    """A filled shape in one cell; ``row``/``col`` are 0-based (text says them 1-based)."""

    kind: str
    color: str
    row: int
    col: int


@dataclass(frozen=True)
class Digit:
    """A digit 0-9 drawn in one cell, in black on white or white on dark; 0-based position."""

    value: int
    row: int
    col: int


@dataclass(frozen=True)
class Scene:
    """What an image shows; answers are computed from this record, never from pixels."""

    rows: int
    cols: int
    objects: tuple[Obj, ...] = ()
    digits: tuple[Digit, ...] = ()
    cell: int = 28
    background: str = "white"
    _cells: frozenset[tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        object.__setattr__(self, "digits", tuple(self.digits))
        if self.rows < 1 or self.cols < 1:
            raise TaskError(f"scene grid must be at least 1x1, got {self.rows}x{self.cols}.")
        if self.cell < 8:
            raise TaskError(f"cell size {self.cell} px is too small to draw in; use at least 8 (default 28).")
        if self.background not in BACKGROUNDS:
            raise TaskError(f"unknown background {self.background!r}; choose one of {sorted(BACKGROUNDS)}.")
        seen: set[tuple[int, int]] = set()
        for thing in (*self.objects, *self.digits):
            if isinstance(thing, Obj):
                if thing.kind not in SHAPES:
                    raise TaskError(f"unknown shape {thing.kind!r}; choose one of {list(SHAPES)}.")
                if thing.color not in RGB:
                    raise TaskError(f"unknown colour {thing.color!r}; choose one of {list(COLORS)}.")
            elif not (isinstance(thing.value, int) and 0 <= thing.value <= 9):
                raise TaskError(f"digit value must be an int 0-9, got {thing.value!r}.")
            pos = (thing.row, thing.col)
            if not (0 <= thing.row < self.rows and 0 <= thing.col < self.cols):
                raise TaskError(f"{thing} lies outside the {self.rows}x{self.cols} grid (positions are 0-based).")
            if pos in seen:
                raise TaskError(f"two things share cell {pos}; each cell holds at most one object or digit.")
            seen.add(pos)
        object.__setattr__(self, "_cells", frozenset(seen))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, as PIL reports it."""
        return (self.cols * self.cell, self.rows * self.cell)

    @property
    def occupied(self) -> frozenset[tuple[int, int]]:
        return self._cells

    def key(self) -> str:
        """Canonical text of the scene (order-free), for de-duplication and split hashing."""
        objs = sorted((o.row, o.col, o.kind, o.color) for o in self.objects)
        digs = sorted((d.row, d.col, d.value) for d in self.digits)
        return f"{self.rows}x{self.cols}@{self.cell}/{self.background}|{objs}|{digs}"


def random_scene(
    rng: random.Random,
    rows: int = 3,
    cols: int = 3,
    n_objects: tuple[int, int] = (1, 5),
    *,
    n_digits: tuple[int, int] = (0, 0),
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = COLORS,
    backgrounds: Sequence[str] = ("white",),
    cell: int = 28,
) -> Scene:
    """Draw a scene: object and digit counts uniform in their inclusive ranges, distinct cells."""
    lo, hi = n_objects
    dlo, dhi = n_digits
    if not (0 <= lo <= hi and 0 <= dlo <= dhi):
        raise TaskError(f"count ranges must be (low, high) with 0 <= low <= high, got {n_objects}, {n_digits}.")
    if hi + dhi > rows * cols:
        raise TaskError(
            f"up to {hi} objects and {dhi} digits do not fit a {rows}x{cols} grid; lower the counts or enlarge it."
        )
    k = rng.randint(lo, hi)
    m = rng.randint(dlo, dhi)
    cells = rng.sample(range(rows * cols), k + m)
    objects = tuple(Obj(rng.choice(shapes), rng.choice(colors), c // cols, c % cols) for c in cells[:k])
    digits = tuple(Digit(rng.randrange(10), c // cols, c % cols) for c in cells[k:])
    return Scene(rows, cols, objects, digits, cell=cell, background=rng.choice(list(backgrounds)))


def digit_ink(background: str) -> tuple[int, int, int]:
    """Colour digits are drawn in on `background` (black on white, white on dark)."""
    return _INK[background]


def _shape_mask(kind: str, s: int) -> np.ndarray:
    """Boolean s x s mask of a shape centred in its cell, tested at pixel centres."""
    m = s // 7  # margin, so neighbouring objects never touch and cell borders stay background
    c = s / 2
    y, x = np.mgrid[0:s, 0:s] + 0.5
    inside = (x >= m) & (x <= s - m) & (y >= m) & (y <= s - m)
    if kind == "square":
        return inside
    if kind == "circle":
        r = (s - 2 * m) / 2
        return (x - c) ** 2 + (y - c) ** 2 <= r * r
    if kind == "triangle":  # apex up, base on the bottom margin
        half = (y - m) / (s - 2 * m) * (s / 2 - m)
        return inside & (np.abs(x - c) <= half)
    if kind == "cross":  # a plus sign with arms a quarter of the cell thick
        t = s / 8
        return inside & ((np.abs(x - c) <= t) | (np.abs(y - c) <= t))
    raise TaskError(f"unknown shape {kind!r}; choose one of {list(SHAPES)}.")


def _digit_mask(value: int, s: int) -> np.ndarray:
    """The 5x7 glyph scaled by an integer factor and centred in an s x s cell."""
    glyph = np.array([[ch == "#" for ch in line] for line in DIGIT_GLYPHS[value]], dtype=bool)
    scale = max(1, (s - 4) // 7)
    big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    out = np.zeros((s, s), dtype=bool)
    top, left = (s - big.shape[0]) // 2, (s - big.shape[1]) // 2
    out[top : top + big.shape[0], left : left + big.shape[1]] = big
    return out


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``scene.size``; identical pixels for identical scenes."""
    s = scene.cell
    width, height = scene.size
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        block = arr[obj.row * s : (obj.row + 1) * s, obj.col * s : (obj.col + 1) * s]
        block[_shape_mask(obj.kind, s)] = RGB[obj.color]
    ink = digit_ink(scene.background)
    for dig in scene.digits:
        block = arr[dig.row * s : (dig.row + 1) * s, dig.col * s : (dig.col + 1) * s]
        block[_digit_mask(dig.value, s)] = ink
    return Image.fromarray(arr)


def describe(scene: Scene) -> str:
    """Plain text that says everything the image shows, in reading order (rows then columns).

    Used for the "black image + description" setting: a model that reads it has all it needs.
    """
    things: list[tuple[int, int, str]] = [
        (o.row, o.col, f"There is a {o.color} {o.kind} at row {o.row + 1}, column {o.col + 1}.")
        for o in scene.objects
    ]
    things += [
        (d.row, d.col, f"The digit {d.value} is at row {d.row + 1}, column {d.col + 1}.") for d in scene.digits
    ]
    if not things:
        return "The picture is empty."
    return " ".join(text for _, _, text in sorted(things))
