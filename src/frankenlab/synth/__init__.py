"""Procedural images: seeded grid scenes of shapes and digits (see :mod:`frankenlab.synth.scenes`)."""

from frankenlab.synth.scenes import (
    BACKGROUNDS,
    COLORS,
    DIGIT_GLYPHS,
    RGB,
    SHAPES,
    Digit,
    Obj,
    Scene,
    describe,
    digit_ink,
    random_scene,
    render,
)

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
