"""One verdict per claim of the paper, each a stated statistical test on the stage outputs.

Every claim names its null hypothesis in `rule`, reports a headline effect with a 95 % interval, n,
a p-value and the test used, and combines its sub-tests with Holm's correction. A sub-test counts
only when its Holm-adjusted p is below α = 0.05 *and* its 95 % interval excludes the null value.
The claim is *supported* when every sub-test is significant in the claimed direction,
*contradicted* when any is significant against it, and *inconclusive* otherwise — with the reason
in words. No update at all, missing stages or a test too small to ever reach α give
*inconclusive*, never a guess. `docs/study.md` lists the rules and their measured false-positive
rates on null pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from frankenlab.regions import Partition
from frankenlab.stats import bootstrap_mean_ci, holm, permutation_group_test, sign_flip_test

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
PARTS = ("early", "mid", "late")
ALPHA = 0.05
N_BOOT = 2000
SEED = 0
#: A layer whose skip removes at least this share of a task's baseline accuracy "breaks" that task.
BREAKS = 0.9
#: Fewest items per task for a bootstrap interval of its critical layer to place it in a part: with fewer,
#: resampling a handful of identical items gives a degenerate, falsely narrow interval.
MIN_ITEMS = 10


@dataclass
class Claim:
    """One verdict with the test that decided it.

    `effect`, `ci_low`, `ci_high`, `n`, `p`, `test` describe the headline test (None where it does not
    apply); `reason` says in one sentence why the verdict is what it is. `evidence` holds the rest:
    `evidence["subtests"]` is a list of dicts (name, effect, ci_low, ci_high, n, p, p_holm, test, verdict)
    for claims that combine several tests, `evidence["table"]` an optional small table
    ({"columns": [...], "rows": [[...], ...]}), anything else scalar numbers or short strings.
    """

    claim: str  # id
    statement: str
    verdict: str
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    p: float | None = None
    test: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SubTest:
    """One directional test: `expect` is +1 when the claim needs effect > null, −1 when < null."""

    name: str
    effect: float
    ci_low: float
    ci_high: float
    n: int
    p: float
    test: str
    expect: int = 1
    null: float = 0.0
    p_holm: float | None = None
    required: bool = True  # False: it can contradict the claim but need not be significant to support it

    @property
    def direction(self) -> int:
        """+1 / −1 when significant above / below the null (Holm p < α and the interval excludes it), else 0."""
        if self.p_holm is None or not self.p_holm < ALPHA or any(map(_bad, (self.ci_low, self.ci_high))):
            return 0
        if self.ci_low > self.null:
            return 1
        if self.ci_high < self.null:
            return -1
        return 0

    @property
    def verdict(self) -> str:
        d = self.direction
        return INCONCLUSIVE if d == 0 else SUPPORTED if d == self.expect else CONTRADICTED

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "effect": _r(self.effect), "ci_low": _r(self.ci_low), "ci_high": _r(self.ci_high),
                "n": int(self.n), "p": _r(self.p), "p_holm": _r(self.p_holm), "test": self.test,
                "expected": ("> " if self.expect > 0 else "< ") + _fmt(self.null)
                + ("" if self.required else " (or not significant)"), "verdict": self.verdict}


def _bad(x: float | None) -> bool:
    return x is None or not math.isfinite(float(x))


def _r(x: Any, nd: int = 5) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return round(v, nd) if math.isfinite(v) else None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _fmt_test(t: SubTest) -> str:
    return f"{_fmt(t.effect)} [{_fmt(t.ci_low)}, {_fmt(t.ci_high)}] (n = {t.n}, Holm p = {_fmt(t.p_holm or 1.0)})"


def _decide(c: Claim, tests: list[SubTest], what: str) -> Claim:
    """Holm over `tests`, the verdict rule of the module docstring, and the headline test."""
    if not tests:
        return c
    for t, p in zip(tests, holm([t.p for t in tests])):
        t.p_holm = p
    against = [t for t in tests if t.direction == -t.expect]
    weak = [t for t in tests if t.required and t.direction != t.expect]
    if against:
        c.verdict, head = CONTRADICTED, against[0]
        c.reason = f"{head.name} is significant against the claim: {_fmt_test(head)}."
    elif not weak:
        c.verdict, head = SUPPORTED, max((t for t in tests if t.required), key=lambda t: t.p_holm or 0.0)
        c.reason = (f"every required sub-test of {what} is significant in the claimed direction and none against "
                    f"it; the weakest, {head.name}: {_fmt_test(head)}.")
    else:
        head = max(weak, key=lambda t: t.p_holm or 0.0)
        c.reason = (f"{head.name} is not significant at α = {ALPHA} after Holm's correction: {_fmt_test(head)}; "
                    "no sub-test contradicts the claim.")
    c.effect, c.ci_low, c.ci_high, c.n = _r(head.effect), _r(head.ci_low), _r(head.ci_high), int(head.n)
    c.p, c.test = _r(head.p_holm), f"{head.name}: {head.test} (Holm-adjusted over {len(tests)})"
    c.evidence["subtests"] = [t.to_dict() for t in tests]
    return c


def _no(c: Claim, reason: str) -> Claim:
    c.reason = reason
    return c


Cuts = tuple[int, int] | Partition


def _partition(cuts: Cuts) -> Partition:
    """A Partition as given, or one from bare cuts (then the layer count is left open above the last cut)."""
    return cuts if isinstance(cuts, Partition) else Partition(10**9, (int(cuts[0]), int(cuts[1])))


def _part_names(cuts: Cuts) -> Callable[[int], str]:
    """0-based LLM decoder index → early/mid/late, via the shared Partition rule."""
    return _partition(cuts).part_of


def _paired(name: str, d: Sequence[float], test: str = "paired bootstrap interval, sign-flip permutation p",
            expect: int = 1) -> SubTest:
    arr = np.asarray(d, dtype=float)
    mean, low, high = bootstrap_mean_ci(arr, n_boot=N_BOOT, seed=SEED)
    return SubTest(name, mean, low, high, int(arr.size), sign_flip_test(arr, seed=SEED), test, expect)


# -- update energy ------------------------------------------------------------------------------
def _layer_energy(layers: pd.DataFrame, phase: str, part_of: Callable[[int], str]) -> pd.DataFrame:
    """Per LLM layer: relative energy ‖Δ‖_F/‖W‖_F over its matrices, and its part."""
    df = layers[(layers["phase"] == phase) & (layers["section"] == "llm")].copy()
    if df.empty:
        return df
    for col in ("rel_fro_total", "rel_fro_mean"):
        if col in df.columns and df[col].notna().all():
            df["energy"] = df[col].astype(float)
            df["measure"] = col
            break
    else:
        df["energy"] = df["fro_sum"].astype(float)
        df["measure"] = "fro_sum"
    df["part"] = [part_of(int(u) - 1) for u in df["layer"]]  # unified LLM layer k+1 = decoder k
    return df


def _group_test(name: str, df: pd.DataFrame, group: Iterable[str], against: Iterable[str],
                expect: int = 1) -> SubTest | None:
    """mean relative energy of the layers in `group` − in `against`, permuting the layers' part labels."""
    g, a = set(group), set(against)
    sub = df[df["part"].isin(g | a)]
    mask = sub["part"].isin(g).to_numpy()
    if mask.all() or not mask.any():
        return None
    x = sub["energy"].to_numpy(float)
    diff, p, arrangements = permutation_group_test(x, mask, seed=SEED)
    rng = np.random.default_rng(SEED)
    gi, ai = x[mask], x[~mask]
    boots = np.array([rng.choice(gi, gi.size).mean() - rng.choice(ai, ai.size).mean() for _ in range(N_BOOT)])
    low, high = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    t = SubTest(name, diff, low, high, int(x.size), p,
                f"layer permutation test ({arrangements} arrangements; smallest attainable p = "
                f"{_fmt(1 / arrangements if arrangements <= 20000 else 1 / 20001)}), interval by resampling "
                "layers within parts", expect)
    return t


def _energy_table(df: pd.DataFrame) -> dict[str, Any]:
    rows = [[int(r["layer"]) - 1, r["part"], _r(r["energy"], 7)] for _, r in df.sort_values("layer").iterrows()]
    return {"columns": ["decoder layer", "part", str(df["measure"].iloc[0])], "rows": rows}


def claim_rl_update_mid_late(layers: pd.DataFrame | None, cuts: Cuts) -> Claim:
    c = Claim("rl_refines_mid_late", "RL's weight update concentrates in mid-to-late LLM layers.", INCONCLUSIVE,
              "H0: the relative update ‖ΔRL‖_F/‖W_IN‖_F of a decoder layer does not depend on whether it is early "
              "or mid/late. Effect: mean relative energy of mid+late layers − early layers; layer permutation "
              "test, interval by resampling layers within parts.")
    if layers is None or layers.empty:
        return _no(c, "the compare stage has no results.")
    df = _layer_energy(layers, "rl", _part_names(cuts))
    if df.empty or set(df["part"]) != set(PARTS):
        return _no(c, "no per-layer RL update for all three parts of the LLM.")
    c.evidence["table"] = _energy_table(df)
    c.evidence["per_part_mean"] = {p: _r(df[df["part"] == p]["energy"].mean(), 7) for p in PARTS}
    if float(df["energy"].abs().max()) == 0.0:
        return _no(c, "no update: every LLM matrix of RL is identical to IN (ΔRL = 0), so there is nothing to "
                      "localize.")
    t = _group_test("mid+late − early relative energy", df, ("mid", "late"), ("early",))
    assert t is not None
    return _decide(c, [t], "the energy contrast")


def claim_energy_in_late_rl_mid(layers: pd.DataFrame | None, cuts: Cuts) -> Claim:
    c = Claim("energy_in_late_rl_mid", "IN's update puts most energy in late layers, RL's in mid layers.",
              INCONCLUSIVE, "H0 (two sub-tests, Holm): ΔIN's relative energy in late layers equals that of the "
              "other layers; ΔRL's in mid layers equals that of the other layers. Layer permutation tests.")
    if layers is None or layers.empty:
        return _no(c, "the compare stage has no results.")
    part_of = _part_names(cuts)
    rl, inn = _layer_energy(layers, "rl", part_of), _layer_energy(layers, "in", part_of)
    if inn.empty:
        return _no(c, "no BASE checkpoint: ΔIN = IN − BASE is unavailable.")
    if rl.empty or set(rl["part"]) != set(PARTS) or set(inn["part"]) != set(PARTS):
        return _no(c, "no per-layer update for all three parts of the LLM.")
    c.evidence["per_part_mean_in"] = {p: _r(inn[inn["part"] == p]["energy"].mean(), 7) for p in PARTS}
    c.evidence["per_part_mean_rl"] = {p: _r(rl[rl["part"] == p]["energy"].mean(), 7) for p in PARTS}
    zero = [name for name, d in (("ΔIN", inn), ("ΔRL", rl)) if float(d["energy"].abs().max()) == 0.0]
    if zero:
        return _no(c, f"no update in {' and '.join(zero)}: the checkpoints are identical in every LLM matrix.")
    tests = [_group_test("ΔIN: late − early/mid", inn, ("late",), ("early", "mid")),
             _group_test("ΔRL: mid − early/late", rl, ("mid",), ("early", "late"))]
    return _decide(c, [t for t in tests if t is not None], "the two phases")


# -- functional localization ---------------------------------------------------------------------
def _critical_rows(rates: np.ndarray) -> np.ndarray:
    """Per row of `rates` [rows, layers]: the last layer position still reaching half the row's peak; NaN
    where the peak is not above 0."""
    rates = np.atleast_2d(rates)
    peak = rates.max(axis=1)
    above = rates >= 0.5 * peak[:, None]
    last = rates.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1)
    return np.where(peak > 0, last.astype(float), np.nan)


def _critical(rates: np.ndarray) -> float:
    """Last layer position whose rate still reaches half the peak; NaN when the peak is 0."""
    return float(_critical_rows(np.asarray(rates, dtype=float)[None])[0]) if np.size(rates) else math.nan


def _boot_critical(flags: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Critical layer position of `flags` [items, layers] under item resampling."""
    idx = rng.integers(0, flags.shape[0], (n_boot, flags.shape[0]))
    return _critical_rows(flags[idx].mean(axis=1))


def _vision_flags(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[int], np.ndarray]]:
    """task → (decoder layers, [items, layers] flip-to-source flags) from the swap probe's item records."""
    from frankenlab.grading.same import normalize, same_answer

    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("status") == "ok":
            by_task.setdefault(str(r["task"]), []).append(r)
    out = {}
    for task, recs in by_task.items():
        layers = sorted(int(k) for k in recs[0]["answers"] if k.lstrip("-").isdigit())
        memo: dict[tuple[str, str], bool] = {}

        def flips(answer: str, source: str, memo: dict[tuple[str, str], bool] = memo) -> bool:
            if (answer, source) not in memo:
                memo[(answer, source)] = same_answer(normalize(answer), normalize(source))
            return memo[(answer, source)]

        flags = np.array([[flips(str(r["answers"][str(L)]), str(r["source_answer"])) for L in layers]
                          for r in recs], dtype=float)
        out[task] = (layers, flags)
    return out


def _ablation_drops(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """task → (layers, [items] baseline correctness, [items, layers] correctness with the layer skipped)."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("correct"):
            by_task.setdefault(str(r["task"]), []).append(r)
    out = {}
    for task, recs in by_task.items():
        layers = sorted(int(k) for k in recs[0]["correct"] if int(k) >= 0)
        base = np.array([bool(r["correct"]["-1"]) for r in recs], dtype=float)
        skipped = np.array([[bool(r["correct"][str(L)]) for L in layers] for r in recs], dtype=float)
        out[task] = (layers, base, skipped)
    return out


def _relative_drop(base: np.ndarray, skipped: np.ndarray) -> np.ndarray:
    """Share of baseline accuracy lost per layer; `base` [..., items], `skipped` [..., items, layers]."""
    b = base.mean(axis=-1)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, (b - skipped.mean(axis=-2)) / b, np.nan)


def _reasoning_critical(reason: tuple[list[int], np.ndarray, np.ndarray],
                        control: tuple[list[int], np.ndarray, np.ndarray] | None,
                        rng: np.random.Generator) -> tuple[float, np.ndarray, list[int], str]:
    """(critical layer, its bootstrap, excluded layers, how) for the reasoning task's ablation profile.

    With a control (perception) task the profile is the reasoning-specific drop: relative accuracy lost on
    reasoning minus on the control, so a layer whose skip breaks everything (the first layer of most LLMs)
    scores ≈ 0. Layers that break both tasks are excluded outright and named; without a control, layers that
    break reasoning completely are excluded.
    """
    layers, rb, rs = reason

    def profile(b: np.ndarray, s: np.ndarray, cb: np.ndarray | None, cs: np.ndarray | None) -> np.ndarray:
        drop = _relative_drop(b, s)
        broken = drop >= BREAKS
        if cb is not None and cs is not None:
            cdrop = _relative_drop(cb, cs)
            broken &= cdrop >= BREAKS
            drop = drop - cdrop
        return np.where(broken | ~np.isfinite(drop), 0.0, np.maximum(drop, 0.0))

    cb = cs = None
    if control is not None:
        _, cb, cs = control
    base_drop = _relative_drop(rb, rs)
    if cb is not None and cs is not None:
        cdrop = _relative_drop(cb, cs)
        excluded = [L for L, d, e in zip(layers, base_drop, cdrop) if d >= BREAKS and e >= BREAKS]
        how = "reasoning-specific drop (reasoning minus control relative accuracy loss)"
    else:
        excluded = [L for L, d in zip(layers, base_drop) if d >= BREAKS]
        how = "relative accuracy loss on reasoning (no control task: layers that break reasoning excluded)"
    crit = _critical(profile(rb, rs, cb, cs))
    B = N_BOOT // 2
    idx = rng.integers(0, rb.size, (B, rb.size))
    if cb is not None and cs is not None:
        jdx = rng.integers(0, cb.size, (B, cb.size))
        boots = _critical_rows(profile(rb[idx], rs[idx], cb[jdx], cs[jdx]))
    else:
        boots = _critical_rows(profile(rb[idx], rs[idx], None, None))
    pos = np.asarray(layers, dtype=float)
    to_layer = np.array([pos[int(k)] if math.isfinite(k) else math.nan for k in boots])
    return (float(pos[int(crit)]) if math.isfinite(crit) else math.nan, to_layer, excluded, how)


def _interval(boots: np.ndarray) -> tuple[float, float, float]:
    """(low, high, share of resamples with a defined value)."""
    ok = boots[np.isfinite(boots)]
    if ok.size == 0:
        return math.nan, math.nan, 0.0
    low, high = np.percentile(ok, [2.5, 97.5])
    return float(low), float(high), ok.size / boots.size


CLAIMED_PART = {"recognition": "early", "ocr": "mid", "counting": "mid", "grounding": "mid", "reasoning": "late"}


def claim_localization_order(vision_items: Sequence[Mapping[str, Any]] | None,
                             ablation_items: Sequence[Mapping[str, Any]] | None, cuts: Cuts,
                             control_tasks: Sequence[str] = ()) -> Claim:
    c = Claim("localization_order", "Recognition localizes early, OCR/counting/grounding mid, reasoning late.",
              INCONCLUSIVE, "Per task, the critical layer is the last decoder layer whose suffix K/V swap still "
              "reaches half the peak flip-to-source rate (RL model; for reasoning: the last layer whose skip still "
              "costs half the peak reasoning-specific accuracy loss). Its 95 % interval comes from resampling items "
              "(bootstrap); a task is placed in a part only when the whole interval lies in it and it has at least "
              f"{MIN_ITEMS} items. Judged on the RL model alone (a property of the model, not of the update). "
              "Supported when "
              "every task is placed in its claimed part, contradicted when one is placed elsewhere. Headline: "
              "reasoning − recognition critical layer, bootstrap interval.")
    part_of = _part_names(cuts)
    rng = np.random.default_rng(SEED)
    crit: dict[str, dict[str, Any]] = {}
    boots: dict[str, np.ndarray] = {}
    for task, (layers, flags) in _vision_flags(vision_items or []).items():
        if task not in CLAIMED_PART:
            continue
        point = _critical(flags.mean(0))
        b = _boot_critical(flags, N_BOOT // 2, rng)
        pos = np.asarray(layers, dtype=float)
        b = np.array([pos[int(k)] if math.isfinite(k) else math.nan for k in b])
        boots[task] = b
        crit[task] = {"layer": pos[int(point)] if math.isfinite(point) else math.nan, "n": int(flags.shape[0]),
                      "peak_flip_rate": float(flags.mean(0).max())}
    drops = _ablation_drops(ablation_items or [])
    controls = {t: v for t, v in drops.items() if t in set(control_tasks)}
    control = next(iter(controls.values()), None)
    excluded: list[int] = []
    for task, value in drops.items():
        if task in controls:
            continue
        point, b, excluded, how = _reasoning_critical(value, control, rng)
        boots["reasoning"] = b
        crit["reasoning"] = {"layer": point, "n": int(value[1].size), "task": task, "profile": how}
        c.evidence["reasoning_profile"] = how
        c.evidence["excluded_layers"] = ", ".join(map(str, excluded)) or "none"
        if controls:
            c.evidence["control_task"] = next(iter(controls))
        break  # one reasoning task decides; others are in the probe tables
    rows, placed = [], {}
    for task, info in crit.items():
        low, high, defined = _interval(boots[task])
        part = None
        if info["n"] >= MIN_ITEMS and math.isfinite(low) and defined >= 0.95 and \
                part_of(int(low)) == part_of(int(high)):
            part = part_of(int(low))
        placed[task] = part
        rows.append([task, CLAIMED_PART[task], _r(info["layer"]), _r(low), _r(high), _r(defined, 3), part or "–",
                     info["n"]])
    c.evidence["table"] = {"columns": ["task", "claimed part", "critical layer", "ci_low", "ci_high",
                                       "defined share", "placed in", "n"], "rows": rows}
    if "recognition" not in crit or "reasoning" not in crit or not ({"ocr", "counting", "grounding"} & set(crit)):
        return _no(c, "missing probe results: recognition, one of OCR/counting/grounding and a reasoning ablation "
                      "are all needed.")
    rb, reb = boots["reasoning"], boots["recognition"]
    ok = np.isfinite(rb) & np.isfinite(reb)
    if ok.sum() >= 0.95 * ok.size and math.isfinite(crit["reasoning"]["layer"]) and \
            math.isfinite(crit["recognition"]["layer"]):
        d = rb[ok] - reb[ok]
        c.effect = _r(crit["reasoning"]["layer"] - crit["recognition"]["layer"])
        c.ci_low, c.ci_high = (_r(v) for v in np.percentile(d, [2.5, 97.5]))
        c.p = _r(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()) + 1 / d.size))
    c.n = int(sum(v["n"] for v in crit.values()))
    c.test = "bootstrap over items of each task's critical layer (percentile interval)"
    wrong = [t for t, p in placed.items() if p is not None and p != CLAIMED_PART[t]]
    undecided = [t for t, p in placed.items() if p is None]
    if wrong:
        c.verdict = CONTRADICTED
        c.reason = "; ".join(f"{t}'s critical layer interval lies in the {placed[t]} part, not {CLAIMED_PART[t]}"
                             for t in wrong) + "."
    elif not undecided:
        c.verdict = SUPPORTED
        c.reason = "every task's critical-layer interval lies inside its claimed part."
    else:
        few = [t for t in undecided if crit[t]["n"] < MIN_ITEMS]
        c.reason = (f"{', '.join(undecided)} cannot be placed: the critical-layer interval spans more than one part, "
                    "the swap never flips the answer" + (f", or fewer than {MIN_ITEMS} items were probed "
                                                        f"({', '.join(few)})" if few else "")
                    + "; no placed task contradicts the claim.")
    return c


# -- transfer (merged variants) ----------------------------------------------------------------
MEASURES = ("M_rea", "M_v2r", "accuracy:image")


def _events(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[tuple[str, str], float]]]:
    """model → measure → {(task, item): 0/1} from eval's item records (failed answers count as wrong)."""
    cell: dict[tuple[str, str, str], dict[str, bool]] = {}
    for r in records:
        ok = bool(r.get("correct")) and not r.get("error")
        cell.setdefault((str(r["model"]), str(r["task"]), str(r["item_id"])), {})[str(r["setting"])] = ok
    out: dict[str, dict[str, dict[tuple[str, str], float]]] = {}
    for (model, task, item), s in cell.items():
        m = out.setdefault(model, {k: {} for k in MEASURES})
        if "text" in s:
            m["M_rea"][(task, item)] = float(s["text"])
        if "image" in s:
            m["accuracy:image"][(task, item)] = float(s["image"])
            if "described" in s:
                m["M_v2r"][(task, item)] = float(s["image"] and s["described"])
    return out


def _shares(cuts: Cuts, n_layers: int | None) -> dict[str, float]:
    part = _partition(cuts)
    n = n_layers or (part.n_llm_layers if isinstance(cuts, Partition) else 3 * max(1, part.cuts[0]))
    sizes = {"early": part.cuts[0], "mid": part.cuts[1] - part.cuts[0], "late": n - part.cuts[1]}
    return {p: s / n for p, s in sizes.items()}


def _variant_share(label: str, shares: Mapping[str, float]) -> float | None:
    """Share of LLM layers taken from RL in a plain early:mid:late recipe label; None for anything else."""
    parts = label.split(":")
    if len(parts) != 3 or any(p not in ("IN", "RL") for p in parts):
        return None
    return sum(shares[name] for name, src in zip(PARTS, parts) if src == "RL")


def claim_transfer_mid_late(eval_items: Sequence[Mapping[str, Any]] | None, cuts: Cuts,
                            n_layers: int | None = None) -> Claim:
    c = Claim("transfer_mid_late", "RL's gains transfer through mid-to-late blocks (IN:RL:RL keeps them, RL:IN:IN "
              "does not).", INCONCLUSIVE, "On the measures where RL's paired gain over IN is significant: H0 (per "
              "measure, Holm over all): transplanted RL blocks recover gain in proportion to the share of layers "
              "they cover. Sub-tests, per item and paired: (A, required > 0) IN:RL:RL's gain per transplanted layer "
              "share − the other two-thirds transplants' (RL:IN:RL, RL:RL:IN); (B, must not be < 0) the mid and "
              "late thirds' (IN:RL:IN, IN:IN:RL) − the early third's (RL:IN:IN). A uniform, additive gain gives 0 "
              "for both.")
    if not eval_items:
        return _no(c, "the merge/eval stage has no item results (it needs IN, RL and the variants).")
    ev = _events(eval_items)
    if "IN" not in ev or "RL" not in ev:
        return _no(c, "the evaluation lacks IN or RL.")
    shares = _shares(cuts, n_layers)
    two_thirds = ["RL:IN:RL", "RL:RL:IN"]
    thirds = ["IN:RL:IN", "IN:IN:RL"]
    rows: list[list[Any]] = []
    tests: list[SubTest] = []
    informative: list[str] = []
    for measure in MEASURES:
        base, rl = ev["IN"][measure], ev["RL"][measure]
        items = sorted(set(base) & set(rl))
        if not items:
            continue
        g = _paired(f"{measure}: RL − IN", [rl[i] - base[i] for i in items])
        g.p_holm = g.p
        rows.append([measure, "RL", 1.0, _r(np.mean([rl[i] for i in items]), 4), _r(g.effect, 4), _r(g.ci_low, 4),
                     _r(g.ci_high, 4), 1.0, len(items)])
        for label, events in ev.items():
            share = _variant_share(label, shares)
            if label in ("IN", "RL") or share is None or not events[measure]:
                continue
            common = [i for i in items if i in events[measure]]
            gain = float(np.mean([events[measure][i] - base[i] for i in common])) if common else math.nan
            rows.append([measure, label, _r(share, 3), _r(np.mean([events[measure][i] for i in common]), 4),
                         _r(gain, 4), None, None, _r(gain / g.effect if g.effect else math.nan, 3), len(common)])
        if g.direction != 1:
            continue
        informative.append(measure)

        def per_share(label: str, item: tuple[str, str], measure: str = measure,
                      base: Mapping[tuple[str, str], float] = base) -> float:
            share = _variant_share(label, shares)
            assert share
            return (ev[label][measure][item] - base[item]) / share

        if "IN:RL:RL" in ev and any(v in ev for v in two_thirds):
            others = [v for v in two_thirds if v in ev]
            common = [i for i in items if all(i in ev[v][measure] for v in ["IN:RL:RL", *others])]
            if common:
                tests.append(_paired(f"{measure} (A): IN:RL:RL − {'/'.join(others)}, gain per layer share",
                                     [per_share("IN:RL:RL", i) - np.mean([per_share(v, i) for v in others])
                                      for i in common]))
        if "RL:IN:IN" in ev and any(v in ev for v in thirds):
            others = [v for v in thirds if v in ev]
            common = [i for i in items if all(i in ev[v][measure] for v in ["RL:IN:IN", *others])]
            if common:  # only against: a gain that needs mid and late together gives 0 here
                b = _paired(f"{measure} (B): {'/'.join(others)} − RL:IN:IN, gain per layer share",
                            [np.mean([per_share(v, i) for v in others]) - per_share("RL:IN:IN", i) for i in common])
                b.required = False
                tests.append(b)
    c.evidence["table"] = {"columns": ["measure", "model", "RL layer share", "value", "gain over IN", "ci_low",
                                       "ci_high", "recovered share of RL's gain", "n"], "rows": rows}
    c.evidence["informative_measures"] = ", ".join(informative) or "none"
    if not informative:
        return _no(c, "RL shows no significant paired gain over IN on M_rea, M_v2r or image accuracy, so there is "
                      "nothing to transfer.")
    if not tests:
        return _no(c, "equal-sized transplants are missing: evaluate IN:RL:RL with RL:IN:RL or RL:RL:IN, and "
                      "RL:IN:IN with IN:RL:IN or IN:IN:RL (the default variants).")
    return _decide(c, tests, "the transplant contrasts")


# -- necessity (freezing) ----------------------------------------------------------------------
def _frozen_name(model: str) -> str | None:
    name = model.lower()
    return name.split("frozen-")[-1] if "frozen-" in name else None


def claim_freeze_late_hurts_most(necessity: pd.DataFrame | None,
                                 items: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Claim:
    c = Claim("freeze_late_hurts_most", "Freezing late layers during RL hurts the gain most.", INCONCLUSIVE,
              "Needs a significant gain of unfrozen RL over IN. H0 (two sub-tests, Holm): frozen-late RL is as "
              "accurate as frozen-early and as frozen-mid RL; paired per item when item results exist, else from "
              "the table's intervals (unpaired, interval separation).")
    if necessity is None or necessity.empty:
        return _no(c, "no freezing results (run `frankenlab miniworld build` or configure freeze.table / "
                      "freeze.train).")
    df = necessity
    if "family" in df.columns and (df["family"] == "all").any():
        df = df[df["family"] == "all"]
    rows = {str(r["model"]): r for _, r in df.iterrows()}
    frozen = {_frozen_name(m): m for m in rows if _frozen_name(m)}
    c.evidence["table"] = {"columns": ["model", "accuracy", "gain over IN", "ci_low", "ci_high"],
                           "rows": [[m, _r(r["acc"], 4), _r(r["gain"], 4), _r(r["gain_low"], 4),
                                     _r(r["gain_high"], 4)] for m, r in rows.items()]}
    if not {"early", "mid", "late"} <= set(frozen):
        return _no(c, "need frozen early, mid and late RL variants.")
    unfrozen = next((r for m, r in rows.items() if m.lower() == "rl"), None)
    if unfrozen is not None and not float(unfrozen["gain_low"]) > 0:
        return _no(c, f"unfrozen RL's gain over IN is not significant ({_fmt(float(unfrozen['gain']))} "
                      f"[{_fmt(float(unfrozen['gain_low']))}, {_fmt(float(unfrozen['gain_high']))}]), so there is no "
                      "gain for freezing to hurt.")
    per_model = {str(k).lower(): v for k, v in (items or {}).items()}
    tests: list[SubTest] = []
    for other in ("early", "mid"):
        a, b = per_model.get(frozen["late"].lower()), per_model.get(frozen[other].lower())
        if a and b:
            ia = {str(r["id"]): float(bool(r.get("strict", r.get("correct")))) for r in a}
            ib = {str(r["id"]): float(bool(r.get("strict", r.get("correct")))) for r in b}
            common = sorted(set(ia) & set(ib))
            tests.append(_paired(f"frozen-late − frozen-{other} accuracy", [ia[i] - ib[i] for i in common],
                                 expect=-1))
        else:
            la, lb = rows[frozen["late"]], rows[frozen[other]]
            sep_low = float(la["gain_high"]) < float(lb["gain_low"])
            sep_high = float(la["gain_low"]) > float(lb["gain_high"])
            d = float(la["gain"]) - float(lb["gain"])
            t = SubTest(f"frozen-late − frozen-{other} gain", d, d, d, int(la.get("n", 0) or 0),
                        0.0 if (sep_low or sep_high) else 1.0,
                        "separation of the two 95 % gain intervals (unpaired, conservative)", expect=-1)
            t.ci_low, t.ci_high = (float(la["gain_low"]) - float(lb["gain_high"]),
                                   float(la["gain_high"]) - float(lb["gain_low"]))
            if not (sep_low or sep_high):
                t.ci_low, t.ci_high = min(t.ci_low, 0.0), max(t.ci_high, 0.0)
            tests.append(t)
    return _decide(c, tests, "the frozen-variant contrasts")


# -- attention to vision ------------------------------------------------------------------------
def claim_attention_mid_late(attention_items: Sequence[Mapping[str, Any]] | None, cuts: Cuts,
                             tokens: str = "response") -> Claim:
    mode = "own" if tokens == "response" else "shared"
    what = "their own response (reasoning) tokens" if mode == "own" else "the shared answer tokens"
    c = Claim("rl_attention_vision_mid_late", "RL raises the attention that answer tokens pay to visual tokens in "
              "mid-to-late layers.", INCONCLUSIVE, f"Share of attention from {what} on image tokens, per item and "
              "layer (mean over heads), RL − IN. H0 (two sub-tests, Holm, paired over items): (1) the mean shift "
              "over mid+late layers is 0; (2) it equals the mean shift over early layers. A rise that is the same "
              "at every depth fails (2).")
    if not attention_items:
        return _no(c, "the attention probe has no results.")
    by = {(str(r["model"]), str(r["id"])): r for r in attention_items if r.get("status") == "ok" and mode in r}
    ids = sorted({i for (m, i) in by if m == "IN" and ("RL", i) in by})
    if not ids:
        return _no(c, "no item was measured on both IN and RL.")
    part_of = _part_names(cuts)
    rl = np.stack([np.asarray(by[("RL", i)][mode]["image"], dtype=float).mean(-1) for i in ids])
    inn = np.stack([np.asarray(by[("IN", i)][mode]["image"], dtype=float).mean(-1) for i in ids])
    shift = rl - inn  # [items, layers]
    parts = np.array([part_of(layer) for layer in range(shift.shape[1])])
    ml, early = np.isin(parts, ["mid", "late"]), parts == "early"
    if not ml.any() or not early.any():
        return _no(c, "the model is too shallow for early and mid/late parts.")
    a, e = shift[:, ml].mean(1), shift[:, early].mean(1)
    c.evidence["mean_shift_mid_late"] = _r(a.mean(), 6)
    c.evidence["mean_shift_early"] = _r(e.mean(), 6)
    c.evidence["tokens"] = what
    c.evidence["response_tokens_mean"] = _r(np.mean([by[("RL", i)][mode].get("tokens", 0) for i in ids]), 2)
    tests = [_paired("mid+late shift (RL − IN)", a), _paired("mid+late shift − early shift", a - e)]
    return _decide(c, tests, "the attention shifts")


# -- weight geometry (per matrix, compare's tensors.csv) ------------------------------------------
#: H0 thresholds of `rl_update_sparse_full_rank`: "sparse" = under half the entries changed, "(nearly)
#: full-rank" = numerical rank above half of min(m, n).
SPARSE_MAX = 0.5
RANK_MIN = 0.5
_GEOMETRY_HINT = ("compare ran without the geometry (--svd none or --top-k-subspace 0); rerun the compare stage "
                  "with compare.svd auto or exact.")


def _truthy(col: pd.Series) -> pd.Series:
    """A bool column as read from CSV or Parquet (True/False, 1/0, "true"/"false")."""
    if col.dtype == bool:
        return col
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def geometry_matrices(tensors: pd.DataFrame | None, phase: str) -> pd.DataFrame:
    """The 2-D LLM weight matrices of `phase` in compare's tensors table, with `changed` = 1 − unchanged_frac.

    Vectors (norms, biases), tensors viewed as matrices (ndim > 2), vision, projector, embeddings and the
    head are left out: the claims are about the language model's weight matrices.
    """
    if tensors is None or tensors.empty or not {"phase", "section", "unchanged_frac"} <= set(tensors.columns):
        return pd.DataFrame()
    keep = (tensors["phase"] == phase) & (tensors["section"] == "llm")
    if "is_matrix" in tensors.columns:
        keep &= _truthy(tensors["is_matrix"])
    if "ndim" in tensors.columns:
        keep &= pd.to_numeric(tensors["ndim"], errors="coerce") == 2
    df = tensors[keep].copy()
    df["changed"] = 1.0 - pd.to_numeric(df["unchanged_frac"], errors="coerce")
    df["key"] = df["canonical"] if "canonical" in df.columns else df["name"]
    return df


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(df[name], errors="coerce") if name in df.columns else pd.Series(np.nan, index=df.index)


def _studentized_ci(x: np.ndarray) -> tuple[float, float]:
    """95 % bootstrap-t interval of the mean: it widens towards a long tail, where the percentile interval of a
    skewed sample (a few large values, often missing from the sample) is too narrow on the other side."""
    n = x.size
    se = float(x.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    if not se > 0:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(SEED)
    xb = x[rng.integers(0, n, (N_BOOT, n))]
    sb = xb.std(axis=1, ddof=1) / math.sqrt(n)
    tb = (xb.mean(axis=1) - x.mean()) / np.where(sb > 0, sb, np.inf)
    hi_q, lo_q = np.percentile(tb, [97.5, 2.5])
    return float(x.mean() - hi_q * se), float(x.mean() - lo_q * se)


def _one_sample(name: str, x: Sequence[float], null: float, expect: int, studentized: bool = False) -> SubTest:
    """mean(x) against `null`: bootstrap interval of the mean (percentile, or bootstrap-t for skewed values),
    sign-flip p of x − null (symmetry about it)."""
    arr = np.asarray(x, dtype=float)
    kind = "studentized (bootstrap-t)" if studentized else "bootstrap"
    t = _paired(name, arr - null, test=f"{kind} interval over matrices, sign-flip p about {_fmt(null)}", expect=expect)
    if studentized:
        t.ci_low, t.ci_high = _studentized_ci(arr - null)
    t.effect, t.ci_low, t.ci_high, t.null = t.effect + null, t.ci_low + null, t.ci_high + null, null
    return t


def _kind_table(df: pd.DataFrame, cols: Mapping[str, pd.Series]) -> dict[str, Any]:
    """Per module kind: matrices and the mean of each named per-matrix series."""
    kinds = df["kind"].astype(str) if "kind" in df.columns else pd.Series("all", index=df.index)
    rows = [[k, int((kinds == k).sum()), *(_r(s[kinds == k].mean(), 5) for s in cols.values())]
            for k in dict.fromkeys(kinds)]
    return {"columns": ["kind", "matrices", *cols], "rows": rows}


def _no_rl_update(tensors: pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    """(ΔRL's LLM matrices, "") or (empty, the reason there is nothing to test)."""
    if tensors is None or tensors.empty:
        return pd.DataFrame(), "the compare stage has no per-tensor results (tensors.csv)."
    rl = geometry_matrices(tensors, "rl")
    if rl.empty:
        return rl, "compare's tensors table has no 2-D LLM weight matrix for ΔRL."
    if not (rl["changed"] > 0).any():
        return rl, ("no update: every LLM weight matrix of RL is identical to IN (ΔRL = 0), so there is no update "
                    "geometry to test.")
    return rl, ""


def claim_rl_sparse_full_rank(tensors: pd.DataFrame | None) -> Claim:
    c = Claim("rl_update_sparse_full_rank", "RL's update is sparse but (nearly) full-rank.", INCONCLUSIVE,
              f"Unit: one 2-D LLM weight matrix that ΔRL = RL − IN changed at all (unchanged matrices have no "
              f"rank to speak of and are left out). H0a: the mean share of changed entries (1 − unchanged_frac) is "
              f"≥ {SPARSE_MAX}; H0b: the mean numerical rank of ΔRL over min(m, n) (update_rank_frac: σ_i > "
              f"rank_tol·σ1, full spectra only) is ≤ {RANK_MIN}. One-sample tests over matrices (bootstrap "
              "interval of the mean, sign-flip p about the threshold), Holm. Supported when the changed share is "
              f"significantly below {SPARSE_MAX} and the rank fraction significantly above {RANK_MIN}; a dense or "
              "a low-rank update contradicts it.")
    rl, why = _no_rl_update(tensors)
    if why:
        return _no(c, why)
    changed = rl[rl["changed"] > 0]
    ranks = _col(changed, "update_rank_frac")
    c.evidence.update(n_matrices=len(rl), n_unchanged=int((rl["changed"] <= 0).sum()),
                      mean_changed_share=_r(changed["changed"].mean()),
                      mean_below_bf16_share=_r(_col(changed, "below_bf16_frac").mean()),
                      n_with_rank=int(ranks.notna().sum()))
    c.evidence["table"] = _kind_table(changed, {"changed share": changed["changed"], "update rank / min(m, n)": ranks,
                                                "below-bf16 share": _col(changed, "below_bf16_frac")})
    tests = [_one_sample("changed share (1 − unchanged_frac)", changed["changed"].to_numpy(float), SPARSE_MAX, -1)]
    if ranks.notna().any():
        tests.append(_one_sample("update rank / min(m, n)", ranks.dropna().to_numpy(float), RANK_MIN, 1))
    _decide(c, tests, "sparsity and rank")
    if len(tests) == 1 and c.verdict == SUPPORTED:
        c.verdict = INCONCLUSIVE
        c.reason = ("the update is significantly sparse, but no changed matrix has a full spectrum, so its rank is "
                    "unknown: rerun the compare stage with compare.svd exact.")
    return c


def claim_rl_off_principal(tensors: pd.DataFrame | None) -> Claim:
    c = Claim("rl_off_principal", "RL's update lies off the principal directions of the weights.", INCONCLUSIVE,
              "Unit: one 2-D LLM weight matrix that ΔRL changed. Per matrix, the excess "
              "principal_share / principal_share_null − 1: the share of ‖ΔRL‖_F² inside W_IN's top-k × k singular "
              "block (U_kᵀ Δ V_k), relative to k²/(m·n), its expectation for an update blind to W's directions. "
              "H0: the mean excess is ≥ 0 (no less principal energy than a random update). Studentized "
              "(bootstrap-t) interval over matrices, as the excess of a low-rank or sparse update is right-skewed; "
              "sign-flip p. Supported when the interval lies below 0; contradicted when it lies "
              "above 0 (the update favours the principal directions). Uniform noise has excess 0 in expectation "
              "and stays inconclusive.")
    rl, why = _no_rl_update(tensors)
    if why:
        return _no(c, why)
    changed = rl[rl["changed"] > 0]
    share, null = _col(changed, "principal_share"), _col(changed, "principal_share_null")
    ok = share.notna() & (null > 0)
    if not ok.any():
        return _no(c, "no principal share for any changed LLM matrix: " + _GEOMETRY_HINT)
    excess = (share[ok] / null[ok] - 1.0).to_numpy(float)
    c.evidence.update(n_matrices=len(rl), n_unchanged=int((rl["changed"] <= 0).sum()),
                      mean_principal_share=_r(share[ok].mean(), 6), mean_null=_r(null[ok].mean(), 6),
                      median_ratio=_r(float(np.median(excess + 1.0))),
                      share_below_null=_r(float(np.mean(excess < 0))))
    inn = geometry_matrices(tensors, "in")
    if not inn.empty:
        s_in, n_in = _col(inn, "principal_share"), _col(inn, "principal_share_null")
        k = s_in.notna() & (n_in > 0) & (inn["changed"] > 0)
        if k.any():
            c.evidence["mean_excess_in"] = _r(float((s_in[k] / n_in[k] - 1.0).mean()))  # ΔIN, for comparison
    c.evidence["table"] = _kind_table(changed[ok], {"principal share": share[ok], "null k²/(m·n)": null[ok],
                                                    "share / null": share[ok] / null[ok]})
    return _decide(c, [_one_sample("principal share / null − 1", excess, 0.0, -1, studentized=True)],
                   "the principal share")


def claim_rl_rotates_less(tensors: pd.DataFrame | None) -> Claim:
    c = Claim("rl_rotates_less_than_sft", "RL rotates the weights' principal subspaces less than SFT (IN) did.",
              INCONCLUSIVE, "Needs BASE. Unit: one 2-D LLM weight matrix changed by ΔRL or ΔIN. Paired per matrix: "
              "d = subspace_angle_mean_deg of ΔRL (IN → RL) − that of ΔIN (BASE → IN), the mean principal angle "
              "between the top-k left and right singular subspaces before and after. H0: mean d ≥ 0. Paired "
              "bootstrap interval over matrices, sign-flip p. Supported when the interval lies below 0, "
              "contradicted when above 0.")
    rl, why = _no_rl_update(tensors)
    if why:
        return _no(c, why)
    inn = geometry_matrices(tensors, "in")
    if inn.empty:
        return _no(c, "no BASE checkpoint: ΔIN = IN − BASE is unavailable, so there is no SFT rotation to compare "
                      "with.")
    if not (inn["changed"] > 0).any():
        return _no(c, "no update in ΔIN: IN is identical to BASE in every LLM matrix.")
    col = "subspace_angle_mean_deg"
    a = rl.assign(angle=_col(rl, col)).set_index("key")[["angle", "changed"]]
    b = inn.assign(angle=_col(inn, col)).set_index("key")[["angle", "changed"]]
    both = a.join(b, lsuffix="_rl", rsuffix="_in", how="inner")
    both = both[both["angle_rl"].notna() & both["angle_in"].notna()
                & ((both["changed_rl"] > 0) | (both["changed_in"] > 0))]
    if both.empty:
        return _no(c, "no LLM matrix has a subspace angle in both phases: " + _GEOMETRY_HINT)
    d = (both["angle_rl"] - both["angle_in"]).to_numpy(float)
    c.evidence.update(n_matrices=len(both), n_rl_unchanged=int((both["changed_rl"] <= 0).sum()),
                      mean_angle_rl_deg=_r(both["angle_rl"].mean()), mean_angle_in_deg=_r(both["angle_in"].mean()),
                      share_rl_below_in=_r(float(np.mean(d < 0))))
    return _decide(c, [_paired("mean principal angle: ΔRL − ΔIN (degrees)", d, expect=-1)], "the rotation contrast")


def decide_all(tables: Mapping[str, pd.DataFrame | None], cuts: Cuts,
               items: Mapping[str, Any] | None = None, *, n_layers: int | None = None,
               control_tasks: Sequence[str] = (), attention_tokens: str = "response",
               rank_variants: Mapping[str, Mapping[str, int]] | None = None) -> list[Claim]:
    from frankenlab.study.claims_behaviour import claim_answer_emerges_earlier, claim_rank_k_keeps_gain

    items = items or {}
    return [
        claim_rl_update_mid_late(tables.get("compare_layers"), cuts),
        claim_energy_in_late_rl_mid(tables.get("compare_layers"), cuts),
        claim_localization_order(items.get("vision_rl"), items.get("ablation_rl"), cuts, control_tasks),
        claim_transfer_mid_late(items.get("eval"), cuts, n_layers),
        claim_freeze_late_hurts_most(tables.get("necessity"), items.get("freeze")),
        claim_attention_mid_late(items.get("attention"), cuts, attention_tokens),
        claim_rl_sparse_full_rank(tables.get("compare_tensors")),
        claim_rl_off_principal(tables.get("compare_tensors")),
        claim_rl_rotates_less(tables.get("compare_tensors")),
        claim_answer_emerges_earlier(tables.get("lens_items")),
        claim_rank_k_keeps_gain(items.get("eval"), rank_variants or {}),
    ]
