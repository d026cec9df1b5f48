"""Typed merge recipes: which model each part of the output comes from.

A recipe has five ingredients, applied in this order (later ones win where they overlap):

1. `parts`: one model label per LLM partition part, `IN:RL:RL` = early:mid:late over the default
   thirds or over `cuts` (`--cuts a,b,c` makes four parts, so four labels).
2. `takes`: explicit `SOURCE:REGION` overrides for any span or section, in the order given, e.g.
   `RL:llm:9-27`, `RL:projector`, `RL:vision`, `RL:embed`, `RL:lm_head`, `RL:final_norm`.
3. `alpha`: per-region interpolation `W = IN + α·(RL − IN)`; α=0 is exactly IN, α=1 exactly RL,
   α > 1 extrapolates beyond RL (ExPO), α < 0 away from it; α must lie in [ALPHA_MIN, ALPHA_MAX].
4. `rank`: per-region rank-K transplant `W = IN + SVD_K(RL − IN)` of every weight matrix (K ≥ 1).
   Where a tensor is in both an α and a rank region, the two compose: `W = IN + α·SVD_K(RL − IN)`.
5. `rest`: the model every tensor not named above comes from (vision tower, projector, embeddings,
   final norm, lm_head, and all LLM layers when there are no parts). Default IN, always recorded.

Recipes are model-independent: region names are checked against a model when a plan is made.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from frankenlab.errors import RecipeError

#: Labels a recipe may use; a plan checks that each one used was given a checkpoint.
LABELS = ("IN", "RL")
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

#: Allowed interpolation factors. α > 1 extrapolates along ΔRL (ExPO); past 4 the weights are
#: dominated by an amplified delta and models stop being meaningful, and α < −1 moves further from
#: RL than RL is from IN in the opposite direction. Both are far outside what anyone evaluates.
ALPHA_MIN, ALPHA_MAX = -1.0, 4.0

#: The paper's six transplant variants (early:mid:late).
STANDARD = ("IN:RL:RL", "RL:IN:IN", "IN:IN:RL", "RL:RL:IN", "IN:RL:IN", "RL:IN:RL")


def normalize_label(label: str, *, what: str = "model label") -> str:
    text = str(label).strip()
    if not _LABEL.match(text):
        raise RecipeError(f"{what} {label!r} is not a model label; use {' or '.join(LABELS)}.")
    up = text.upper()
    if up not in LABELS:
        raise RecipeError(f"unknown {what} {label!r}; the models are {', '.join(LABELS)} (case-insensitive).")
    return up


class Take(BaseModel):
    """Take `region` (a region spec such as `llm:9-27`, `late`, `projector`) from `source`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str
    region: str

    @classmethod
    def parse(cls, text: str) -> Take:
        source, sep, region = str(text).strip().partition(":")
        if not sep or not region.strip():
            raise RecipeError(
                f"--take {text!r}: expected SOURCE:REGION, e.g. 'RL:llm:9-27', 'RL:projector' or 'RL:late'."
            )
        return cls(source=normalize_label(source, what="source in --take"), region=region.strip())

    def __str__(self) -> str:
        return f"{self.source}:{self.region}"


AlphaLike = str | Mapping[str, float] | Sequence[tuple[str, float]] | None


def _parse_alpha(alpha: AlphaLike) -> tuple[tuple[str, float], ...]:
    if alpha is None or alpha == "":
        return ()
    if isinstance(alpha, str):
        pairs: list[tuple[str, Any]] = []
        for item in (a.strip() for a in alpha.split(",")):
            if not item:
                continue
            region, sep, value = item.rpartition("=")
            if not sep or not region.strip():
                raise RecipeError(f"--alpha {alpha!r}: expected REGION=VALUE pairs, e.g. 'mid=0.5,late=1.0'.")
            pairs.append((region.strip(), value.strip()))
    elif isinstance(alpha, Mapping):
        pairs = [(str(k), v) for k, v in alpha.items()]
    else:
        pairs = [(str(k), v) for k, v in alpha]
    out: list[tuple[str, float]] = []
    for region, value in pairs:
        try:
            a = float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"alpha for {region!r} is {value!r}, not a number.") from None
        if not math.isfinite(a):
            raise RecipeError(f"alpha for {region!r} must be finite, got {value!r}.")
        if not ALPHA_MIN <= a <= ALPHA_MAX:
            raise RecipeError(
                f"alpha for {region!r} is {a:g}, outside [{ALPHA_MIN:g}, {ALPHA_MAX:g}]: α in [0, 1] interpolates "
                f"between IN and RL, α > 1 extrapolates beyond RL (W = IN + α·ΔRL, ExPO) and α < 0 moves away "
                f"from RL; beyond {ALPHA_MAX:g} (or below {ALPHA_MIN:g}) the amplified delta dominates the "
                "weights. Use a value within the bounds."
            )
        if any(r == region for r, _ in out):
            raise RecipeError(f"alpha for region {region!r} is given twice.")
        out.append((region, a))
    return tuple(out)


RankLike = str | Mapping[str, int] | Sequence[tuple[str, int]] | None


def _parse_rank(rank: RankLike) -> tuple[tuple[str, int], ...]:
    if rank is None or rank == "":
        return ()
    if isinstance(rank, str):
        pairs: list[tuple[str, Any]] = []
        for item in (a.strip() for a in rank.split(",")):
            if not item:
                continue
            region, sep, value = item.rpartition("=")
            if not sep or not region.strip():
                raise RecipeError(f"--rank {rank!r}: expected REGION=K pairs, e.g. 'late=8' or 'mid=4,late=16'.")
            pairs.append((region.strip(), value.strip()))
    elif isinstance(rank, Mapping):
        pairs = [(str(k), v) for k, v in rank.items()]
    else:
        pairs = [(str(k), v) for k, v in rank]
    out: list[tuple[str, int]] = []
    for region, value in pairs:
        k: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            k = value
        elif isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            k = int(value)
        if k is None:
            raise RecipeError(f"rank for {region!r} is {value!r}, not a whole number; give K ≥ 1, e.g. "
                              f"'{region}=8'.")
        if k < 1:
            raise RecipeError(f"rank for {region!r} is {k}; K must be at least 1 (K singular triplets of ΔRL are "
                              f"kept; for no change at all take the region from IN).")
        if any(r == region for r, _ in out):
            raise RecipeError(f"rank for region {region!r} is given twice.")
        out.append((region, k))
    return tuple(out)


def _parse_cuts(cuts: str | Sequence[int] | None) -> tuple[int, ...] | None:
    if cuts is None or cuts == "" or (not isinstance(cuts, str) and len(cuts) == 0):
        return None
    if isinstance(cuts, str):
        try:
            values = tuple(int(c) for c in cuts.split(",") if c.strip())
        except ValueError:
            raise RecipeError(f"cuts {cuts!r}: expected comma-separated integers such as '8,20'.") from None
    else:
        values = tuple(int(c) for c in cuts)
    if not values:
        raise RecipeError("cuts: give at least one cut, e.g. '8,20'.")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise RecipeError(f"cuts {list(values)} must be strictly increasing.")
    return values


class Recipe(BaseModel):
    """One Frankenstein variant (see the module docstring for how the fields combine)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str | None = Field(None, description="Variant name (defaults to the parts spec).")
    parts: tuple[str, ...] = Field((), description="Source per LLM partition part, e.g. ('IN', 'RL', 'RL').")
    cuts: tuple[int, ...] | None = Field(None, description="LLM partition cuts; None = thirds.")
    takes: tuple[Take, ...] = Field((), description="Explicit SOURCE:REGION overrides, in order.")
    alpha: tuple[tuple[str, float], ...] = Field((), description="(region, α): W = IN + α(RL − IN).")
    rank: tuple[tuple[str, int], ...] = Field((), description="(region, K): W = IN + SVD_K(RL − IN).")
    rest: str = Field("IN", description="Model for every tensor not assigned otherwise.")

    @field_validator("parts")
    @classmethod
    def _labels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_label(p, what="recipe part") for p in v)

    @field_validator("rest")
    @classmethod
    def _rest(cls, v: str) -> str:
        return normalize_label(v, what="--rest model")

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if not (self.parts or self.takes or self.alpha or self.rank):
            raise RecipeError("empty recipe: give parts such as 'IN:RL:RL', a --take, an --alpha or a --rank.")
        if self.parts:
            n_parts = 3 if self.cuts is None else len(self.cuts) + 1
            if len(self.parts) != n_parts:
                if self.cuts is None:
                    hint = (f"pass {len(self.parts) - 1} cut(s) with --cuts" if len(self.parts) > 1
                            else f"use --take {self.parts[0]}:llm for the whole LLM")
                    raise RecipeError(
                        f"recipe {':'.join(self.parts)!r} has {len(self.parts)} part(s) but the default partition "
                        f"(thirds) has 3; {hint}."
                    )
                raise RecipeError(
                    f"recipe {':'.join(self.parts)!r} has {len(self.parts)} part(s) but cuts "
                    f"{','.join(map(str, self.cuts))} make {n_parts}; give one label per part."
                )
        return self

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str | None = None, *, cuts: str | Sequence[int] | None = None,
              takes: Sequence[str | Take] = (), alpha: AlphaLike = None, rank: RankLike = None,
              rest: str = "IN", name: str | None = None) -> Recipe:
        """Build from CLI-style strings: `parse("IN:RL:RL", cuts="8,20", takes=["RL:projector"])`."""
        parts: tuple[str, ...] = ()
        if spec is not None and str(spec).strip():
            raw = [p.strip() for p in str(spec).split(":")]
            if any(not p for p in raw):
                raise RecipeError(f"recipe {spec!r} has an empty part; write e.g. 'IN:RL:RL'.")
            for i, p in enumerate(raw):
                if p.upper() not in LABELS:
                    raise RecipeError(f"recipe {spec!r}: unknown model label {p!r} in part {i + 1}; the models are "
                                      f"{', '.join(LABELS)} (case-insensitive).")
            parts = tuple(p.upper() for p in raw)
        try:
            return cls(
                name=name, parts=parts, cuts=_parse_cuts(cuts),
                takes=tuple(t if isinstance(t, Take) else Take.parse(t) for t in takes),
                alpha=_parse_alpha(alpha), rank=_parse_rank(rank), rest=rest,
            )
        except ValidationError as exc:
            raise RecipeError(_validation_message(exc)) from None

    # -- views -------------------------------------------------------------------------------
    @property
    def parts_spec(self) -> str | None:
        return ":".join(self.parts) if self.parts else None

    @property
    def label(self) -> str:
        """Short name: the variant name, else the parts spec, else the full spec."""
        return self.name or self.parts_spec or self.spec()

    def labels(self) -> set[str]:
        used = set(self.parts) | {t.source for t in self.takes} | {self.rest}
        if self.alpha or self.rank:
            used |= {"IN", "RL"}
        return used

    def spec(self) -> str:
        """The recipe as one CLI-style line (round-trips through `Recipe.parse`)."""
        bits = [self.parts_spec] if self.parts else []
        if self.cuts is not None:
            bits.append("--cuts " + ",".join(map(str, self.cuts)))
        bits += [f"--take {t}" for t in self.takes]
        if self.alpha:
            bits.append("--alpha " + ",".join(f"{r}={a:g}" for r, a in self.alpha))
        if self.rank:
            bits.append("--rank " + ",".join(f"{r}={k}" for r, k in self.rank))
        bits.append(f"--rest {self.rest}")
        return " ".join(bits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "parts": self.parts_spec, "cuts": list(self.cuts) if self.cuts else None,
            "takes": [str(t) for t in self.takes], "alpha": dict(self.alpha) or None,
            "rank": dict(self.rank) or None, "rest": self.rest,
            "spec": self.spec(),
        }


def _validation_message(exc: ValidationError) -> str:
    msgs = []
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        msgs.append(str(inner) if inner is not None else f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
    return "; ".join(msgs)


def standard_recipes(*, cuts: str | Sequence[int] | None = None, rest: str = "IN") -> list[Recipe]:
    """The paper's six early:mid:late transplants, in the paper's order."""
    return [Recipe.parse(s, cuts=cuts, rest=rest, name=s) for s in STANDARD]


_VARIANT_KEYS = {"name", "recipe", "cuts", "take", "takes", "alpha", "rank", "rest"}


def recipes_from_config(data: Any, *, where: str = "recipe file") -> dict[str, Recipe]:
    """Variants from parsed YAML: a list of variants, or `{defaults: {...}, variants: [...]}`.

    Each variant has `recipe` (e.g. IN:RL:RL), optional `name`, `cuts`, `take` (list of
    SOURCE:REGION), `alpha` (mapping or 'mid=0.5'), `rank` (mapping or 'late=8'), `rest`; `defaults`
    fill in what a variant omits.
    """
    defaults: dict[str, Any] = {}
    if isinstance(data, dict):
        unknown = set(data) - {"defaults", "variants"}
        if unknown:
            raise RecipeError(f"{where}: unknown top-level key(s) {sorted(unknown)}; use 'defaults' and 'variants'.")
        defaults = data.get("defaults") or {}
        data = data.get("variants")
    if not isinstance(data, list) or not data:
        raise RecipeError(f"{where}: expected a non-empty list of variants (or a mapping with 'variants').")
    if not isinstance(defaults, dict) or set(defaults) - (_VARIANT_KEYS - {"name"}):
        raise RecipeError(f"{where}: 'defaults' must be a mapping of {sorted(_VARIANT_KEYS - {'name'})}.")
    out: dict[str, Recipe] = {}
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"recipe": item}
        if not isinstance(item, dict):
            raise RecipeError(f"{where}: variant {i + 1} must be a mapping or a recipe string, got {item!r}.")
        unknown = set(item) - _VARIANT_KEYS
        if unknown:
            raise RecipeError(f"{where}: variant {i + 1} has unknown key(s) {sorted(unknown)}; "
                              f"allowed: {sorted(_VARIANT_KEYS)}.")
        v = {**defaults, **item}
        takes = v.get("take", v.get("takes")) or []
        if isinstance(takes, str):
            takes = [takes]
        try:
            r = Recipe.parse(v.get("recipe"), cuts=v.get("cuts"), takes=takes, alpha=v.get("alpha"),
                             rank=v.get("rank"), rest=v.get("rest", "IN"),
                             name=None if v.get("name") is None else str(v["name"]))
        except RecipeError as exc:
            raise RecipeError(f"{where}: variant {i + 1}: {exc}") from None
        key = r.label
        if key in out:
            raise RecipeError(f"{where}: two variants are named {key!r}; give each a distinct 'name'.")
        out[key] = r.model_copy(update={"name": key})
    return out


def load_recipes(path: str | os.PathLike[str]) -> dict[str, Recipe]:
    """Named variants from a YAML file (see `recipes_from_config`), in file order."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"cannot read recipe file {p} ({exc}).") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe file {p} is not valid YAML ({exc}).") from exc
    return recipes_from_config(data, where=str(p))


def select_variants(config: str | os.PathLike[str] | None = None, name: str | None = None,
                    all_variants: bool = False, *, recipe: str | None = None,
                    cuts: str | Sequence[int] | None = None, takes: Sequence[str | Take] = (),
                    alpha: AlphaLike = None, rank: RankLike = None, rest: str | None = None) -> list[Recipe]:
    """The variants a merge writes: from a YAML file of named variants, or one recipe from the inline options.

    The arguments mirror `frankenlab merge` (`--config`, `--name`, `--all`, `--recipe`, `--cuts`, `--take`,
    `--alpha`, `--rank`, `--rest`), so the messages name those options. With `config`, `name` picks one
    variant, `all_variants` takes every one, and a file of a single variant needs neither; the inline
    options must then be empty, because the file sets them per variant. Without `config`, `name` and
    `all_variants` are errors and the inline options make one recipe (`rest` defaults to IN).
    """
    if config is not None:
        if recipe or takes or alpha or rank or cuts or rest:
            raise RecipeError("--config sets recipe, cuts, takes, alpha, rank and rest per variant; do not combine "
                              "it with --recipe/--take/--alpha/--rank/--cuts/--rest.")
        variants = load_recipes(config)
        if all_variants:
            return list(variants.values())
        if name is not None:
            if name not in variants:
                raise RecipeError(f"{config} has no variant {name!r}; it has: {', '.join(variants)}.")
            return [variants[name]]
        if len(variants) == 1:
            return list(variants.values())
        raise RecipeError(f"{config} defines {len(variants)} variants ({', '.join(variants)}); pick one with "
                          "--name, or write them all with --all.")
    if name is not None or all_variants:
        raise RecipeError("--name and --all need --config.")
    return [Recipe.parse(recipe, cuts=cuts, takes=takes, alpha=alpha, rank=rank, rest=rest or "IN")]
