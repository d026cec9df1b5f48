"""Scenes: pixels checked against hand-written expectations, not against the renderer's own helpers."""

from __future__ import annotations

import io
import itertools
import random
import re

import numpy as np
import pytest

from frankenlab.errors import TaskError
from frankenlab.synth import COLORS, DIGIT_GLYPHS, RGB, SHAPES, Digit, Obj, Scene, describe, random_scene, render

WHITE = (255, 255, 255)


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def colour_name(px) -> str:
    """Name a saturated colour from its channels alone (independent of the RGB table)."""
    r, g, b = (int(v) for v in px)
    if r > 150 and g > 150 and b < 100:
        return "yellow"
    return ("red", "green", "blue")[int(np.argmax([r, g, b]))]


def cell_block(arr: np.ndarray, row: int, col: int, s: int = 28) -> np.ndarray:
    return arr[row * s : (row + 1) * s, col * s : (col + 1) * s]


def classify_shape(block: np.ndarray, bg=WHITE) -> str:
    """Tell the four shapes apart from a 28 px cell by where ink is (corners, diagonals)."""
    ink = (block != np.array(bg, dtype=np.uint8)).any(axis=-1)
    tl, tr, bl, br = ink[6, 6], ink[6, 21], ink[21, 6], ink[21, 21]
    if tl and tr and bl and br:
        return "square"
    if bl and br and not tl and not tr:
        return "triangle"
    if ink[20, 20] and not tl:  # 8.5 px off-centre on the diagonal: inside a circle, outside a plus
        return "circle"
    return "cross"


def test_render_size_mode_and_cell_alignment() -> None:
    scene = Scene(2, 4, [Obj("circle", "red", 1, 3)])
    img = render(scene)
    assert img.mode == "RGB" and img.size == scene.size == (4 * 28, 2 * 28)
    small = Scene(1, 2, [Obj("square", "blue", 0, 1)], cell=14)
    assert render(small).size == (28, 14)


@pytest.mark.parametrize("seed", range(12))
def test_every_object_fills_its_cell_centre_and_stays_inside(seed: int) -> None:
    scene = random_scene(random.Random(seed), n_objects=(0, 9))
    arr = np.asarray(render(scene))
    by_cell = {(o.row, o.col): o for o in scene.objects}
    for r, c in itertools.product(range(3), range(3)):
        block = cell_block(arr, r, c)
        ring = np.concatenate([block[:3].reshape(-1, 3), block[-3:].reshape(-1, 3),
                               block[:, :3].reshape(-1, 3), block[:, -3:].reshape(-1, 3)])
        assert (ring == WHITE).all(), "ink must stay off the cell border so each object is one merged patch"
        if (r, c) not in by_cell:
            assert (block == WHITE).all()
            continue
        obj = by_cell[(r, c)]
        centre = block[14, 14]
        assert tuple(centre) == RGB[obj.color]
        assert colour_name(centre) == obj.color
        assert classify_shape(block) == obj.kind
        assert set(map(tuple, block.reshape(-1, 3))) == {WHITE, RGB[obj.color]}  # filled, no blending


def test_all_shape_colour_combinations_are_recognisable() -> None:
    objs = [Obj(k, c, i, j) for i, k in enumerate(SHAPES) for j, c in enumerate(COLORS)]
    arr = np.asarray(render(Scene(4, 4, objs)))
    for o in objs:
        block = cell_block(arr, o.row, o.col)
        assert classify_shape(block) == o.kind and colour_name(block[14, 14]) == o.color


def test_digit_pixels_are_the_glyph_table_scaled() -> None:
    for d in range(10):
        block = cell_block(np.asarray(render(Scene(1, 1, digits=[Digit(d, 0, 0)]))), 0, 0)
        ink = (block == 0).all(axis=-1)
        assert ((block == 0).all(axis=-1) | (block == 255).all(axis=-1)).all()
        ys, xs = np.nonzero(ink)
        crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        # every glyph has ink on its first and last row; column extent can be narrower than 5
        glyph = np.array([[ch == "#" for ch in line] for line in DIGIT_GLYPHS[d]])
        cols = np.nonzero(glyph.any(axis=0))[0]
        expected = np.repeat(np.repeat(glyph[:, cols.min() : cols.max() + 1], 3, axis=0), 3, axis=1)
        assert crop.shape == expected.shape and (crop == expected).all()


def test_the_ten_digits_are_pairwise_distinguishable() -> None:
    inks = []
    for d in range(10):
        arr = np.asarray(render(Scene(3, 3, digits=[Digit(d, 1, 2)])))
        inks.append((arr != 255).any(axis=-1))
    for a, b in itertools.combinations(range(10), 2):
        assert (inks[a] != inks[b]).sum() >= 9, f"digits {a} and {b} differ in fewer than one 3x3 glyph dot"


def test_dark_background_draws_digits_in_white() -> None:
    arr = np.asarray(render(Scene(1, 2, [Obj("square", "green", 0, 0)], [Digit(7, 0, 1)], background="dark")))
    assert tuple(arr[0, 0]) == (24, 24, 32)
    assert colour_name(arr[14, 14]) == "green"
    assert (arr[:, 28:] == 255).all(axis=-1).sum() == 3 * 3 * sum(line.count("#") for line in DIGIT_GLYPHS[7])


def test_same_seed_same_scene_and_png_bytes_different_seed_differs() -> None:
    a = random_scene(random.Random(5), n_digits=(0, 1))
    b = random_scene(random.Random(5), n_digits=(0, 1))
    assert a == b and a.key() == b.key()
    assert png_bytes(render(a)) == png_bytes(render(b))
    assert random_scene(random.Random(6), n_digits=(0, 1)) != a
    assert len({random_scene(random.Random(s), n_digits=(0, 1)).key() for s in range(10)}) >= 9


def test_random_scene_respects_counts_and_grid() -> None:
    rng = random.Random(0)
    for _ in range(50):
        s = random_scene(rng, rows=2, cols=4, n_objects=(2, 3), n_digits=(1, 2), shapes=("cross",), colors=("red",))
        assert 2 <= len(s.objects) <= 3 and 1 <= len(s.digits) <= 2
        cells = [(t.row, t.col) for t in (*s.objects, *s.digits)]
        assert len(set(cells)) == len(cells)
        assert all(0 <= r < 2 and 0 <= c < 4 for r, c in cells)
        assert {(o.kind, o.color) for o in s.objects} == {("cross", "red")}
        assert all(0 <= d.value <= 9 for d in s.digits)


def test_describe_names_every_object_and_digit_1_based() -> None:
    scene = Scene(3, 3, [Obj("triangle", "blue", 2, 0), Obj("circle", "red", 0, 1)], [Digit(4, 1, 1)])
    text = describe(scene)
    assert text == (
        "There is a red circle at row 1, column 2. The digit 4 is at row 2, column 2. "
        "There is a blue triangle at row 3, column 1."
    )
    for seed in range(10):
        s = random_scene(random.Random(seed), n_digits=(0, 1))
        t = describe(s)
        found = re.findall(r"a (\w+) (\w+) at row (\d), column (\d)", t)
        assert sorted(found) == sorted((o.color, o.kind, str(o.row + 1), str(o.col + 1)) for o in s.objects)
        assert len(re.findall(r"The digit \d", t)) == len(s.digits)
    assert describe(Scene(2, 2)) == "The picture is empty."


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: Scene(2, 2, [Obj("circle", "red", 0, 0)], [Digit(1, 0, 0)]), "share cell"),
        (lambda: Scene(2, 2, [Obj("circle", "red", 2, 0)]), "outside the 2x2 grid"),
        (lambda: Scene(2, 2, [Obj("circle", "purple", 0, 0)]), "unknown colour 'purple'"),
        (lambda: Scene(2, 2, [Obj("star", "red", 0, 0)]), "unknown shape 'star'"),
        (lambda: Scene(2, 2, digits=[Digit(10, 0, 0)]), "digit value must be an int 0-9"),
        (lambda: Scene(2, 2, background="grey"), "unknown background"),
        (lambda: random_scene(random.Random(0), rows=2, cols=2, n_objects=(5, 5)), "do not fit a 2x2 grid"),
    ],
)
def test_bad_scenes_raise_task_error(make, fragment: str) -> None:
    with pytest.raises(TaskError, match=re.escape(fragment)):
        make()
