"""The merge plan: every output tensor → its source model, or IN + α·(RL − IN), or IN + SVD_K(RL − IN).

`make_plan` validates everything before anything is written: labels given, architectures equal,
tensor sets, shapes and dtypes equal, cuts and regions in range, every take, α or rank region
matching at least one tensor. Output names are the rest model's on-disk names, so the layout read
(hub or transformers-5) is the layout written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from frankenlab.arch.base import SECTIONS, Adapter, TensorInfo
from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import ArchitectureError, RecipeError, RegionError
from frankenlab.io.shards import TensorSpec, st_dtype
from frankenlab.merge.recipe import Recipe
from frankenlab.regions import Partition, Region, parse_region

log = logging.getLogger(__name__)

#: Interpolations are W = ANCHOR + α·(TARGET − ANCHOR).
ANCHOR, TARGET = "IN", "RL"
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Non-block sections reachable by --take, beyond what regions.parse_region knows.
_SECTION_REGIONS = {
    "embed": ("embed", "embed"), "embeddings": ("embed", "embed"), "embed_tokens": ("embed", "embed"),
    "head": ("lm_head", "head"), "lm_head": ("lm_head", "head"),
    "final_norm": ("final_norm", "other"), "norm": ("final_norm", "other"),
}


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The (rows, columns) a tensor's SVD is taken over: (shape[0], rest) as in `compare`; None for 1-D."""
    if len(shape) < 2:
        return None
    cols = 1
    for s in shape[1:]:
        cols *= s
    return shape[0], cols


def truncates(shape: tuple[int, ...], rank: int | None) -> bool:
    """Whether a rank-K transplant changes anything: only for a matrix with K < min(rows, columns).

    A 1-D tensor (norm, bias) is a rank-≤1 object, and K ≥ min(m, n) keeps every singular triplet,
    so both keep the full delta: the tensor is RL's (times α), with no SVD round trip.
    """
    m = matrix_shape(shape)
    return rank is not None and m is not None and rank < min(m)


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: canonical name, output (on-disk) name, where its values come from."""

    name: str
    out_name: str
    source: str  # label copied from; for interpolations and rank-K transplants the target (RL)
    alpha: float | None  # None: verbatim copy of `source` (or α=1 with a rank); else ANCHOR + α(TARGET − ANCHOR)
    shape: tuple[int, ...]
    in_dtype: str  # safetensors dtype of the inputs
    out_dtype: str
    section: str
    block: int | None
    region: str  # the region that decided the source ("rest" when nothing did)
    rank: int | None = None  # K: the delta is replaced by its best rank-K approximation (see `truncates`)

    @property
    def rank_k(self) -> int | None:
        """K when the output needs a truncated SVD, else None (no rank, a 1-D tensor, or K ≥ min(m, n))."""
        return self.rank if truncates(self.shape, self.rank) else None

    @property
    def full_delta(self) -> bool:
        """A rank was asked for but keeps the whole delta (1-D tensor, or K ≥ min(m, n))."""
        return self.rank is not None and self.rank_k is None

    @property
    def copy_from(self) -> str | None:
        """Label whose stored values are the output exactly; None when it must be computed.

        α=0 and α=1 are the endpoints: IN and RL exactly, with no float round trip; so is a rank
        that keeps the full delta.
        """
        if self.rank_k is not None:
            return ANCHOR if self.alpha == 0.0 else None
        if self.alpha is None:
            return self.source
        if self.alpha == 0.0:
            return ANCHOR
        if self.alpha == 1.0:
            return TARGET
        return None

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.out_name, self.shape, self.out_dtype)

    def provenance(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "alpha": self.alpha}
        if self.alpha is not None or self.rank is not None:
            d["anchor"] = ANCHOR
        if self.rank is not None:
            d["rank"] = self.rank
            d["full_delta"] = self.full_delta
        return d

    @property
    def formula(self) -> str:
        """What the output is, in words: 'RL', 'IN + 0.5·(RL − IN)', 'IN + SVD_8(RL − IN)'."""
        if self.rank_k is None and self.alpha is None:
            return self.source
        scale = "" if self.alpha is None else f"{self.alpha:g}·"
        delta = f"({TARGET} − {ANCHOR})" if self.rank_k is None else f"SVD_{self.rank_k}({TARGET} − {ANCHOR})"
        return f"{ANCHOR} + {scale}{delta}"


@dataclass(frozen=True)
class MergePlan:
    recipe: Recipe
    rest: str
    family: str
    model_type: str
    layout: str  # of the rest model = of the output
    cuts: tuple[int, ...]
    parts: dict[str, tuple[int, int]]  # partition part → (first, last) LLM layer
    inputs: dict[str, str]  # label → fingerprint
    paths: dict[str, str]  # label → checkpoint directory
    dtype: str | None  # requested output dtype (None = as stored)
    tensors: tuple[TensorPlan, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return sum(t.spec.nbytes for t in self.tensors)

    def by_name(self) -> dict[str, TensorPlan]:
        return {t.name: t for t in self.tensors}

    def summary(self) -> list[dict[str, Any]]:
        """Rows (section, blocks, source, alpha, rank, truncated, tensors), consecutive blocks with one
        assignment merged.

        `rank` is the requested K; `truncated` counts the row's tensors that K actually truncates (1-D
        tensors and matrices with min(rows, columns) ≤ K keep their full delta).
        """
        cells: dict[tuple[str, int | None], list[Any]] = {}
        for t in self.tensors:
            cell = cells.setdefault((t.section, t.block), [set(), 0, 0])
            cell[0].add((t.source, t.alpha, t.rank))
            cell[1] += 1
            cell[2] += t.rank_k is not None
        rows: list[dict[str, Any]] = []
        for section in SECTIONS:
            keys = sorted((k for k in cells if k[0] == section), key=lambda k: -1 if k[1] is None else k[1])
            for key in keys:
                assign, n, cut = cells[key]
                source, alpha, rank = next(iter(assign)) if len(assign) == 1 else ("mixed", None, None)
                last = rows[-1] if rows else None
                if (last and last["section"] == section and key[1] is not None and last["last"] == key[1] - 1
                        and (last["source"], last["alpha"], last["rank"]) == (source, alpha, rank)):
                    last["last"] = key[1]
                    last["tensors"] += n
                    last["truncated"] += cut
                    continue
                rows.append({"section": section, "first": key[1], "last": key[1], "source": source,
                             "alpha": alpha, "rank": rank, "truncated": cut, "tensors": n})
        return rows

    def operators(self) -> list[dict[str, Any]]:
        """Per --alpha / --rank region: its value and how many tensors it decided (rank: how many it truncated)."""
        out: list[dict[str, Any]] = []
        for region, a in self.recipe.alpha:
            n = sum(1 for t in self.tensors if f"--alpha {region}={a:g}" in t.region.split(" + "))
            out.append({"option": "alpha", "region": region, "alpha": a, "tensors": n})
        for region, k in self.recipe.rank:
            mine = [t for t in self.tensors if f"--rank {region}={k}" in t.region.split(" + ")]
            out.append({"option": "rank", "region": region, "rank": k, "tensors": len(mine),
                        "truncated": sum(1 for t in mine if t.rank_k is not None),
                        "full_delta": sum(1 for t in mine if t.full_delta)})
        return out

    def provenance(self) -> dict[str, Any]:
        return {
            "format": "frankenlab-merge/1",
            "recipe": self.recipe.to_dict(),
            "cuts": list(self.cuts),
            "parts": {k: list(v) for k, v in self.parts.items()},
            "rest": self.rest,
            "dtype": self.dtype,
            "inputs": dict(self.inputs),
            "paths": dict(self.paths),
            "model_type": self.model_type,
            "layout": self.layout,
            "interpolation": f"W = {ANCHOR} + alpha * ({TARGET} - {ANCHOR}), computed in float32 "
                             "(float64 for F64 tensors), then cast to the output dtype; alpha 0 and 1 copy "
                             f"{ANCHOR} and {TARGET} exactly",
            "alpha": dict(self.recipe.alpha),
            "rank": dict(self.recipe.rank),
            "operators": self.operators(),
            "rank_k": f"W = {ANCHOR} + [alpha *] SVD_K({TARGET} - {ANCHOR}): the delta formed in float32 (float64 "
                      "for F64), viewed as (shape[0], -1), torch.linalg.svd (reduced), (U[:, :K] * S[:K]) @ Vh[:K] "
                      f"[times alpha], plus {ANCHOR}, cast to the output dtype; 1-D tensors and K >= min(rows, "
                      f"columns) keep the full delta ({TARGET} exactly when alpha is null)",
            "warnings": list(self.warnings),
            "tensors": {t.out_name: t.provenance() for t in self.tensors},
        }


def resolve_region(spec: str, adapter: Adapter, cuts: tuple[int, ...]) -> Region:
    """A region spec for --take / --alpha: everything `regions.parse_region` knows, plus the
    non-block sections `embed`, `lm_head` and `final_norm`."""
    key = spec.strip()
    if key in _SECTION_REGIONS:
        name, section = _SECTION_REGIONS[key]
        return Region(name, section, 0, 0, whole=True)
    try:
        return parse_region(key, adapter, cuts)
    except RegionError as exc:
        if str(exc).startswith("unknown region"):
            raise RegionError(f"{exc} Also valid in recipes: embed, lm_head, final_norm.") from None
        raise


def _check_architectures(models: Mapping[str, Checkpoint]) -> Adapter:
    items = list(models.items())
    first_label, first = items[0]
    a = first.adapter
    for label, c in items[1:]:
        b = c.adapter
        if c.model_type != first.model_type:
            raise ArchitectureError(
                f"{label} is model_type {c.model_type!r} ({c.root}) but {first_label} is {first.model_type!r}; "
                "blocks can only be exchanged between checkpoints of one architecture."
            )
        if (b.n_llm_layers, b.n_vision_blocks) != (a.n_llm_layers, a.n_vision_blocks):
            raise ArchitectureError(
                f"{label} has {b.n_llm_layers} LLM layers / {b.n_vision_blocks} vision blocks but {first_label} "
                f"has {a.n_llm_layers} / {a.n_vision_blocks}; the checkpoints are different model sizes."
            )
    return a


def _check_tensors(models: Mapping[str, Checkpoint], out_dtype: str | None) -> None:
    items = list(models.items())
    first_label, first = items[0]
    names = set(first.canonical_names())
    for label, c in items[1:]:
        other = set(c.canonical_names())
        if other != names:
            missing, extra = sorted(names - other), sorted(other - names)
            bits = []
            if missing:
                bits.append(f"{len(missing)} tensor(s) of {first_label} missing (first: {missing[0]!r})")
            if extra:
                bits.append(f"{len(extra)} extra tensor(s) (first: {extra[0]!r})")
            raise ArchitectureError(f"{label} ({c.root}) and {first_label} hold different tensors: "
                                    f"{'; '.join(bits)}.")
        for name in first.canonical_names():
            ma, mb = first.meta(name), c.meta(name)
            if ma.shape != mb.shape:
                raise ArchitectureError(
                    f"tensor {name!r} has shape {list(mb.shape)} in {label} but {list(ma.shape)} in {first_label}; "
                    "the checkpoints are not the same architecture (different vocab or widths?)."
                )
            if ma.dtype != mb.dtype and out_dtype is None:
                raise RecipeError(
                    f"tensor {name!r} is {mb.dtype} in {label} but {ma.dtype} in {first_label}; pass --dtype "
                    "(e.g. --dtype bfloat16) so that the output has one dtype."
                )


def make_plan(recipe: Recipe, models: Mapping[str, Checkpoint], *, dtype: str | torch.dtype | None = None) -> MergePlan:
    """Validate `recipe` against the labelled checkpoints and assign every output tensor."""
    if not models:
        raise RecipeError("no models given.")
    models = {str(k).upper(): v for k, v in models.items()}
    unknown = sorted(recipe.labels() - set(models))
    if unknown:
        raise RecipeError(
            f"recipe {recipe.spec()!r} names model(s) {', '.join(unknown)}, but only {', '.join(models)} "
            f"{'was' if len(models) == 1 else 'were'} given."
        )
    out_dtype = None if dtype is None else st_dtype(dtype)
    adapter = _check_architectures(models)
    _check_tensors(models, out_dtype)
    if recipe.cuts is None and adapter.n_llm_layers < 3 and (recipe.parts or _names_thirds(recipe)):
        raise RecipeError(f"the model has only {adapter.n_llm_layers} LLM layer(s), too few for early/mid/late "
                          "thirds; pass --cuts (e.g. --cuts 1 with a two-part recipe such as IN:RL).")
    thirds_impossible = recipe.cuts is None and adapter.n_llm_layers < 3  # takes-only recipes still work
    partition = None if thirds_impossible else Partition.make(adapter.n_llm_layers, recipe.cuts)
    part_regions = [] if partition is None else partition.regions()
    if recipe.parts and len(recipe.parts) != len(part_regions):  # recipe validation makes this unreachable
        raise RecipeError(f"recipe has {len(recipe.parts)} parts, partition {len(part_regions)}.")
    takes = [(t, resolve_region(t.region, adapter, recipe.cuts)) for t in recipe.takes]
    alphas = [(r, a, resolve_region(r, adapter, recipe.cuts)) for r, a in recipe.alpha]
    ranks = [(r, k, resolve_region(r, adapter, recipe.cuts)) for r, k in recipe.rank]
    rest_ck = models[recipe.rest]
    used: dict[str, int] = {}
    plans: list[TensorPlan] = []
    for disk in rest_ck.names():
        info: TensorInfo = rest_ck.info(disk)
        meta = rest_ck.meta(disk)
        source, alpha, rank, decided = recipe.rest, None, None, "rest"
        if recipe.parts and info.section == "llm" and info.block is not None:
            k = next(i for i, r in enumerate(part_regions) if r.lo <= info.block <= r.hi)
            source, decided = recipe.parts[k], part_regions[k].name
        for take, region in takes:
            if region.contains(info):
                source, decided = take.source, f"--take {take}"
                used[decided] = used.get(decided, 0) + 1
        for rname, a, region in alphas:
            if region.contains(info):
                if meta.dtype not in _FLOAT_DTYPES:
                    raise RecipeError(f"--alpha {rname}={a:g}: tensor {info.name!r} is {meta.dtype}, which cannot "
                                      "be interpolated.")
                source, alpha, decided = TARGET, a, f"--alpha {rname}={a:g}"
                used[decided] = used.get(decided, 0) + 1
        alpha_decided = decided if alpha is not None else None
        for rname, k, region in ranks:
            if region.contains(info):
                if meta.dtype not in _FLOAT_DTYPES:
                    raise RecipeError(f"--rank {rname}={k}: tensor {info.name!r} is {meta.dtype}, which has no "
                                      "singular value decomposition.")
                tag = f"--rank {rname}={k}"
                source, rank = TARGET, k
                decided = tag if alpha_decided is None else f"{alpha_decided} + {tag}"
                used[tag] = used.get(tag, 0) + 1
        plans.append(TensorPlan(
            name=info.name, out_name=disk, source=source, alpha=alpha, shape=meta.shape, in_dtype=meta.dtype,
            out_dtype=out_dtype or meta.dtype, section=info.section, block=info.block, region=decided, rank=rank,
        ))
    for take, region in takes:
        if f"--take {take}" not in used:
            why = " (lm_head is tied to the embeddings and not stored)" if region.section == "head" else ""
            raise RecipeError(f"--take {take} matches no tensor of this {adapter.family} checkpoint{why}.")
    for rname, a, _ in alphas:
        if f"--alpha {rname}={a:g}" not in used:
            raise RecipeError(f"--alpha {rname}={a:g} matches no tensor of this {adapter.family} checkpoint.")
    rank_notes = []
    for rname, k, _ in ranks:
        tag = f"--rank {rname}={k}"
        if tag not in used:
            raise RecipeError(f"{tag} matches no tensor of this {adapter.family} checkpoint.")
        mine = [t for t in plans if tag in t.region.split(" + ")]
        if not mine:
            rank_notes.append(f"{tag} decides no tensor: a later --rank covers all of {rname!r}.")
        elif not any(t.rank_k is not None for t in mine):
            widest = max((min(m) for t in mine if (m := matrix_shape(t.shape)) is not None), default=None)
            if widest is None:
                rank_notes.append(f"{tag} matches only 1-D tensors, which keep their full delta: it changes nothing "
                                  "over the same recipe without --rank.")
            else:
                rank_notes.append(f"{tag} keeps the full delta of every matrix of {rname!r} (K ≥ min(rows, columns) "
                                  f"of each, at most {widest}): it changes nothing over the same recipe without "
                                  f"--rank; use K < {widest} for a low-rank transplant.")
    return MergePlan(
        recipe=recipe, rest=recipe.rest, family=adapter.family, model_type=rest_ck.model_type,
        layout=rest_ck.layout, cuts=() if partition is None else partition.cuts,
        parts={r.name: (r.lo, r.hi) for r in part_regions},
        inputs={label: c.fingerprint for label, c in models.items()},
        paths={label: str(c.root) for label, c in models.items()},
        dtype=out_dtype, tensors=tuple(plans), warnings=tuple(_warnings(plans, rest_ck, rank_notes)),
    )


def _names_thirds(recipe: Recipe) -> bool:
    regions = [t.region for t in recipe.takes] + [r for r, _ in recipe.alpha] + [r for r, _ in recipe.rank]
    return any(r in ("early", "mid", "late") for r in regions)


def _warnings(plans: list[TensorPlan], rest: Checkpoint, notes: list[str]) -> list[str]:
    out = list(notes)
    by_section = {t.section: t for t in plans if t.section in ("embed", "head")}
    tied = bool(rest.config.get("tie_word_embeddings") or (rest.config.get("text_config") or {}).get(
        "tie_word_embeddings"))
    if tied and {"embed", "head"} <= set(by_section):
        e, h = by_section["embed"], by_section["head"]
        if (e.source, e.alpha, e.rank_k) != (h.source, h.alpha, h.rank_k):
            out.append("config.json ties lm_head to the embeddings, but they come from different sources here; "
                       "transformers will keep only one of them when loading.")
    for w in out:
        log.warning(w)
    return out
