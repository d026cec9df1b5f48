"""`probe kl`: per-token KL between IN and RL on one shared response, by position class.

RL's Razor (arXiv 2509.04259) asks how far RL moved the model's token distributions, and where. Per
item, one response token sequence R is shared by both models — RL's own greedy answer (default), IN's
(``response="in"``) or the gold answer text followed by the end-of-turn token (``"gold"``) — so IN and RL
see identical tokens. prompt + R is
teacher-forced through both models (``use_cache=False``, one forward each, items batched with right padding
whose positions are dropped), and at every position t that has a successor the next-token distributions
p_RL, p_IN give, in float32 log-softmax, ``kl_rl_in`` = KL(p_RL‖p_IN) and ``kl_in_rl`` = KL(p_IN‖p_RL).

Token classes: ``prompt`` (chat template and vision start/end markers included), ``image`` (image
placeholder tokens, the model config's image token id; VLMs only), ``reasoning`` (response tokens before
the final answer) and ``answer`` (from the first token of the final-answer span to the end of R, closing
brace and end token included; the span is the last occurrence in the response text of the grader's
extracted answer, `frankenlab.grading.extract_answer`, else of the gold answer, else the last non-special
token). A row's ``class`` is that of the behaviour its distribution produces: a distribution that predicts
a response token takes that token's class (so the last prompt position, which writes the first response
token, counts as response); every other one the class of its own position (prompt, image). ``own_class``
and ``next_class`` (the class of position t and of token t+1) are kept to regroup either way. The last
position of the sequence (no successor) is not a row.

Both models are held in memory at once (the KL needs both distributions at every position); they must share
the tokenizer and the output vocabulary size. Prompts are encoded with RL's processor.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from frankenlab.errors import FrankenlabError, ProbeError
from frankenlab.grading.extract import extract_answer
from frankenlab.probe.run import (
    ProbeModel,
    ProgressFn,
    append_tokens,
    describe_model,
    finish,
    load_dtype,
    open_model,
    probe_decoding,
)
from frankenlab.probe.store import ItemStore
from frankenlab.probe.tasks import load_math_tasks
from frankenlab.runtime.generate import Prompt, encode, resolve_max_new_tokens, to_model, tokenizer_of
from frankenlab.stats import bootstrap_statistic_ci
from frankenlab.tasks import TaskItem
from frankenlab.tasks.schema import kind_of

__all__ = ["CLASSES", "CLASS_COLUMNS", "ITEM_COLUMNS", "KLResult", "KLSettings", "TOKEN_COLUMNS", "TOP_COLUMNS",
           "answer_start", "end_token", "kl_classes_plot", "kl_records", "kl_tables", "position_classes", "run_kl",
           "token_kl"]

log = logging.getLogger(__name__)
NAME = "kl"
CLASSES = ("prompt", "image", "reasoning", "answer")
RESPONSE = ("reasoning", "answer")
TOKEN_COLUMNS = ["item", "task", "position", "class", "own_class", "next_class", "token", "token_text", "next_token",
                 "next_token_text", "kl_rl_in", "kl_in_rl", "logp_rl", "logp_in"]
CLASS_COLUMNS = ["class", "n_tokens", "n_items", "kl_rl_in_mean", "kl_rl_in_low", "kl_rl_in_high", "kl_in_rl_mean",
                 "kl_in_rl_low", "kl_in_rl_high"]
ITEM_COLUMNS = ["item", "task", "class", "n_tokens", "kl_rl_in_mean", "kl_in_rl_mean"]
TOP_COLUMNS = ["item", "task", "position", "class", "token_text", "next_token_text", "context", "kl_rl_in",
               "kl_in_rl", "rl_top", "p_rl_top", "in_top", "p_in_top"]
#: Tokens shown on each side of the marked token in ``kl_top.context``.
CONTEXT = 8
#: Positions per float32 log-softmax chunk (bounds memory at ~2 × CHUNK × vocab floats per model).
CHUNK = 512


class KLSettings(BaseModel):
    """Everything that changes a KL result (recorded in the manifest; all but ``top`` in the resume key)."""

    model_config = ConfigDict(frozen=True)

    response: Literal["rl", "in", "gold"] = Field(
        "rl", description="Shared response: RL's greedy answer, IN's greedy answer, or the gold answer text.")
    top: int = Field(50, ge=0, description="Rows of kl_top.csv (largest kl_rl_in); tabulation only.")
    max_new_tokens: int | None = Field(None, ge=1, description="Length limit of the generated response; None = "
                                       "the per-kind default (runtime.generate.DEFAULT_MAX_NEW_TOKENS).")
    batch_size: int = Field(4, ge=1, description="Items per generate batch and per teacher-forced forward.")
    system_prompt: str | None = Field(None, description="System prompt for every question.")
    n_boot: int = Field(1000, ge=1, description="Bootstrap resamples (over items) for every interval.")
    seed: int = Field(0, description="Seed of generated tasks and of the bootstrap.")


@dataclass
class KLResult:
    tokens: pd.DataFrame
    classes: pd.DataFrame
    items: pd.DataFrame
    top: pd.DataFrame
    failed: list[dict[str, Any]]
    manifest: dict[str, Any]
    out_dir: Path




def _image_id(model: Any) -> int | None:
    """The image placeholder id of a VLM; None for text-only models."""
    for key in ("image_token_id", "image_token_index"):
        value = getattr(model.config, key, None)
        if isinstance(value, int):
            return value
    return None


def answer_start(tok: Any, response_ids: Sequence[int], gold: str | None) -> tuple[int, str]:
    """(index in R of the first ``answer`` token, how the span was found: extracted / gold / last_token).

    Character offsets come from decoding prefixes of R (special tokens skipped), found by bisection; a token
    whose text ends after the span's first character is an answer token.
    """
    ids = list(response_ids)
    if not ids:
        raise ProbeError("empty response: nothing to classify.")

    def decode(k: int) -> str:
        return tok.decode(ids[:k], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    text = decode(len(ids))
    start, how = -1, "last_token"
    found, _ = extract_answer(text)
    if found and (at := text.rfind(found)) >= 0:
        start, how = at, "extracted"
    elif gold and (at := text.rfind(gold.strip())) >= 0 and gold.strip():
        start, how = at, "gold"
    if start < 0:
        special = set(tok.all_special_ids)
        content = [k for k, t in enumerate(ids) if t not in special]
        return (content[-1] if content else len(ids) - 1), how
    lo, hi = 0, len(ids) - 1  # first k with len(decode(k + 1)) > start
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(mid + 1)) > start:
            hi = mid
        else:
            lo = mid + 1
    return lo, how


def position_classes(ids: Sequence[int], prompt_len: int, answer_at: int, image_id: int | None) -> list[str]:
    """Class of every position (the last included): prompt / image / reasoning / answer."""
    out = []
    for t in range(len(ids)):
        if t < prompt_len:
            out.append("image" if image_id is not None and ids[t] == image_id else "prompt")
        else:
            out.append("answer" if t - prompt_len >= answer_at else "reasoning")
    return out


def _pad_right(rows: list[dict[str, Any]], pad_id: int) -> tuple[dict[str, Any], list[int]]:
    """One batch from single-row encodings: per-token tensors right-padded (attention 0), image tensors stacked.

    Right padding leaves every real position's causal context (and position ids) as in the unpadded row.
    """
    lengths = [int(r["input_ids"].shape[1]) for r in rows]
    width = max(lengths)
    per_token = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r[key] for r in rows if key in r]
        if not isinstance(values[0], torch.Tensor):
            out[key] = values[0]
        elif key in per_token:
            if len(values) != len(rows):
                raise ProbeError(f"encoding key {key!r} is missing for some items; cannot batch them.")
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1]), value=fill) for v in values])
        else:  # pixel_values, image_grid_thw, ...: one block per image, in item order
            out[key] = torch.cat(values, dim=0)
    return out, lengths


def token_kl(model_rl: Any, model_in: Any, inputs: dict[str, Any], lengths: Sequence[int]) -> list[dict[str, Any]]:
    """Per row, over positions 0..n−2: both KL directions, log p of the next token and each model's argmax."""
    with torch.inference_mode():
        logits_rl = model_rl(**inputs, use_cache=False).logits
        logits_in = model_in(**to_model(model_in, inputs), use_cache=False).logits
    if logits_rl.shape != logits_in.shape:
        raise ProbeError(f"IN and RL output logits of different shapes {tuple(logits_in.shape)} vs "
                         f"{tuple(logits_rl.shape)}; their vocabularies differ.")
    ids = inputs["input_ids"]
    out = []
    for b, n in enumerate(lengths):
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("rl_in", "in_rl", "lp_rl", "lp_in", "rl_top",
                                                                "p_rl_top", "in_top", "p_in_top")}
        for s in range(0, n - 1, CHUNK):
            e = min(n - 1, s + CHUNK)
            lr = torch.log_softmax(logits_rl[b, s:e].float(), dim=-1)
            li = torch.log_softmax(logits_in[b, s:e].to(lr.device).float(), dim=-1)
            diff = lr - li
            parts["rl_in"].append((lr.exp() * diff).sum(-1))
            parts["in_rl"].append((li.exp() * -diff).sum(-1))
            nxt = ids[b, s + 1:e + 1].to(lr.device)[:, None]
            parts["lp_rl"].append(lr.gather(-1, nxt)[:, 0])
            parts["lp_in"].append(li.gather(-1, nxt)[:, 0])
            for name, lp in (("rl", lr), ("in", li)):
                best = lp.max(-1)
                parts[f"{name}_top"].append(best.indices)
                parts[f"p_{name}_top"].append(best.values.exp())
        out.append({k: torch.cat(v).cpu().tolist() if v else [] for k, v in parts.items()})
    return out


def end_token(tok: Any) -> int:
    """The end-of-turn token appended to a gold response (what a generated response ends with)."""
    vocab = tok.get_vocab()
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        if name in vocab:
            return int(vocab[name])
    if tok.eos_token_id is None:
        raise ProbeError("the tokenizer has no end-of-turn or eos token to end a gold response with.")
    return int(tok.eos_token_id)


def _texts(tok: Any, ids: Sequence[int], cache: dict[int, str]) -> list[str]:
    for t in set(ids) - cache.keys():
        cache[t] = tok.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [cache[t] for t in ids]


def _responses(pm: ProbeModel, chunk: Sequence[TaskItem], prompts: dict[int, Prompt],
               settings: KLSettings) -> tuple[dict[int, list[int]], dict[int, str]]:
    """Generated response ids per chunk index (one answer length per generate batch) and per-item errors."""
    from frankenlab.probe.attention import generate_ids

    got: dict[int, list[int]] = {}
    errors: dict[int, str] = {}
    kinds = {i: kind_of(task=chunk[i].task) for i in prompts}
    for kind in sorted(set(kinds.values())):
        mine = [i for i in sorted(prompts) if kinds[i] == kind]
        limit = resolve_max_new_tokens(settings.max_new_tokens, kind)
        try:
            got.update(zip(mine, generate_ids(pm.model, pm.processor, [prompts[i] for i in mine], limit,
                                              settings.system_prompt)))
        except (RuntimeError, ValueError) as exc:  # isolate the failing item
            log.warning("batched generation failed (%s); retrying item by item", exc)
            for i in mine:
                try:
                    got[i] = generate_ids(pm.model, pm.processor, [prompts[i]], limit, settings.system_prompt)[0]
                except (RuntimeError, ValueError) as one:
                    errors[i] = f"{type(one).__name__}: {one}"
    return got, errors


def _measure(rl: ProbeModel, in_: ProbeModel, chunk: Sequence[TaskItem], responses: dict[int, list[int]],
             prompts: dict[int, Prompt], settings: KLSettings) -> dict[int, dict[str, Any]]:
    """Teacher-forced KL records for the chunk items that have a response (one forward per model)."""
    tok = tokenizer_of(rl.processor)
    image_id = _image_id(rl.model)
    order = sorted(responses)
    encs, prompt_lens = [], []
    for i in order:
        single = to_model(rl.model, encode(rl.processor, [prompts[i]], settings.system_prompt))
        prompt_lens.append(int(single["input_ids"].shape[1]))
        encs.append(append_tokens(single, responses[i]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch, lengths = _pad_right(encs, int(pad))
    cache: dict[int, str] = {}
    records = {}
    for i, row, P, enc in zip(order, token_kl(rl.model, in_.model, batch, lengths), prompt_lens, encs):
        ids = [int(t) for t in enc["input_ids"][0].tolist()]
        R = responses[i]
        at, how = answer_start(tok, R, chunk[i].answer)
        texts = _texts(tok, ids, cache)
        records[i] = {
            "status": "ok", "prompt_len": P, "response_ids": list(R),
            "response_text": tok.decode(R, skip_special_tokens=True), "answer_start": at, "answer_span": how,
            "ids": ids, "token_text": texts, "classes": position_classes(ids, P, at, image_id),
            "kl_rl_in": row["rl_in"], "kl_in_rl": row["in_rl"], "logp_rl": row["lp_rl"], "logp_in": row["lp_in"],
            "rl_top": _texts(tok, row["rl_top"], cache), "p_rl_top": row["p_rl_top"],
            "in_top": _texts(tok, row["in_top"], cache), "p_in_top": row["p_in_top"]}
    return records


def kl_records(rl: ProbeModel, in_: ProbeModel, items: Sequence[TaskItem],
               settings: KLSettings) -> list[dict[str, Any]]:
    """One record per item (status ok or failed with the error): the shared response and per-position KL."""
    tok = tokenizer_of(rl.processor)
    records: list[dict[str, Any]] = [{"key": it.key, "id": it.id, "task": it.task, "answer": it.answer,
                                      "response_source": settings.response} for it in items]
    prompts: dict[int, Prompt] = {}
    for i, it in enumerate(items):
        try:
            prompts[i] = Prompt.of(it)
        except (FrankenlabError, OSError) as exc:
            records[i].update(status="failed", error=f"{type(exc).__name__}: {exc}")
    errors: dict[int, str] = {}
    if settings.response == "gold":
        responses = {}
        for i in prompts:
            ids = tok(items[i].answer, add_special_tokens=False)["input_ids"]
            if ids:
                responses[i] = [*ids, end_token(tok)]
            else:
                errors[i] = f"ProbeError: gold answer {items[i].answer!r} has no tokens."
    else:
        source = rl if settings.response == "rl" else in_
        responses, errors = _responses(source, items, prompts, settings)
        for i in responses:
            kind = kind_of(task=items[i].task)
            records[i].update(kind=kind, max_new_tokens=resolve_max_new_tokens(settings.max_new_tokens, kind))
    for i, err in errors.items():
        records[i].update(status="failed", error=err)
    try:
        done = _measure(rl, in_, items, responses, prompts, settings) if responses else {}
    except (FrankenlabError, RuntimeError, ValueError) as exc:
        if len(responses) == 1:
            done = {}
            records[next(iter(responses))].update(status="failed", error=f"{type(exc).__name__}: {exc}")
        else:  # find the culprit: one item at a time
            done = {}
            for i in responses:
                try:
                    done.update(_measure(rl, in_, items, {i: responses[i]}, prompts, settings))
                except (FrankenlabError, RuntimeError, ValueError) as one:
                    records[i].update(status="failed", error=f"{type(one).__name__}: {one}")
    for i, rec in done.items():
        records[i].update(rec)
    return records


def _context(rec: dict[str, Any], t: int) -> str:
    texts = rec["token_text"]
    left = "".join(texts[max(0, t - CONTEXT):t])
    right = "".join(texts[t + 1:t + 1 + CONTEXT])
    return f"{left}⟦{texts[t]}⟧{right}".replace("\n", "\\n")


def _class_stats(s: np.ndarray, c: np.ndarray, settings: KLSettings) -> tuple[float, float, float]:
    """Token-mean of a class and its cluster-bootstrap interval (items resampled, sums and counts kept together)."""
    if c.sum() == 0:
        return (math.nan, math.nan, math.nan)
    return bootstrap_statistic_ci([s, c], lambda s, c: float(s.sum() / c.sum()), n_boot=settings.n_boot,
                                  seed=settings.seed)


def kl_tables(records: list[dict[str, Any]],
              settings: KLSettings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(tokens, classes, items, top) from the item records."""
    ok = [r for r in records if r.get("status") == "ok"]
    frames = []
    for r in ok:
        n = len(r["ids"]) - 1
        frames.append(pd.DataFrame({
            "item": r["key"], "task": r["task"], "position": np.arange(n),
            "class": [nx if nx in RESPONSE else own for own, nx in zip(r["classes"][:n], r["classes"][1:n + 1])],
            "own_class": r["classes"][:n], "next_class": r["classes"][1:n + 1],
            "token": r["ids"][:n], "token_text": r["token_text"][:n], "next_token": r["ids"][1:n + 1],
            "next_token_text": r["token_text"][1:n + 1], "kl_rl_in": r["kl_rl_in"], "kl_in_rl": r["kl_in_rl"],
            "logp_rl": r["logp_rl"], "logp_in": r["logp_in"], "_rl_top": r["rl_top"], "_p_rl_top": r["p_rl_top"],
            "_in_top": r["in_top"], "_p_in_top": r["p_in_top"]}))
    full = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=[*TOKEN_COLUMNS, "_rl_top", "_p_rl_top", "_in_top", "_p_in_top"])
    tokens = full[TOKEN_COLUMNS].copy()
    for col in ("position", "token", "next_token"):
        tokens[col] = tokens[col].astype("int64")
    for col in ("kl_rl_in", "kl_in_rl", "logp_rl", "logp_in"):
        tokens[col] = tokens[col].astype("float64")

    per_item = (tokens.groupby(["item", "task", "class"], sort=False)
                .agg(n_tokens=("kl_rl_in", "size"), kl_rl_in_mean=("kl_rl_in", "mean"),
                     kl_in_rl_mean=("kl_in_rl", "mean"), kl_rl_in_sum=("kl_rl_in", "sum"),
                     kl_in_rl_sum=("kl_in_rl", "sum")).reset_index())
    rows = []
    for cls in CLASSES:
        g = per_item[per_item["class"] == cls]
        if g.empty:
            continue
        c = g["n_tokens"].to_numpy(float)
        a = _class_stats(g["kl_rl_in_sum"].to_numpy(float), c, settings)
        b = _class_stats(g["kl_in_rl_sum"].to_numpy(float), c, settings)
        rows.append({"class": cls, "n_tokens": int(c.sum()), "n_items": len(g), "kl_rl_in_mean": a[0],
                     "kl_rl_in_low": a[1], "kl_rl_in_high": a[2], "kl_in_rl_mean": b[0], "kl_in_rl_low": b[1],
                     "kl_in_rl_high": b[2]})
    classes = pd.DataFrame(rows, columns=CLASS_COLUMNS)
    items_table = per_item[ITEM_COLUMNS].reset_index(drop=True)

    by_key = {r["key"]: r for r in ok}
    best = full.sort_values("kl_rl_in", ascending=False, kind="stable").head(settings.top)
    top = pd.DataFrame({
        "item": best["item"], "task": best["task"], "position": best["position"].astype("int64"),
        "class": best["class"], "token_text": best["token_text"], "next_token_text": best["next_token_text"],
        "context": [_context(by_key[k], int(t)) for k, t in zip(best["item"], best["position"])],
        "kl_rl_in": best["kl_rl_in"].astype(float), "kl_in_rl": best["kl_in_rl"].astype(float),
        "rl_top": best["_rl_top"], "p_rl_top": best["_p_rl_top"].astype(float), "in_top": best["_in_top"],
        "p_in_top": best["_p_in_top"].astype(float)}, columns=TOP_COLUMNS).reset_index(drop=True)
    return tokens, classes, items_table, top


def kl_classes_plot(classes: pd.DataFrame, out: Path) -> list[str]:
    """Bars per position class, both KL directions, with the item-bootstrap 95 % intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from frankenlab.io import atomic_file

    if classes.empty:
        return []
    fig = Figure(figsize=(7, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(classes))
    for j, (col, label, color) in enumerate((("kl_rl_in", "KL(RL ‖ IN)", "tab:red"),
                                             ("kl_in_rl", "KL(IN ‖ RL)", "tab:blue"))):
        mean = classes[f"{col}_mean"].to_numpy(float)
        err = np.stack([mean - classes[f"{col}_low"].to_numpy(float), classes[f"{col}_high"].to_numpy(float) - mean])
        ax.bar(x + (j - 0.5) * 0.38, mean, width=0.38, yerr=np.clip(err, 0, None), capsize=3, color=color,
               label=label)
    ax.set_xticks(x, [f"{c}\n({n} tokens, {m} items)" for c, n, m in
                      zip(classes["class"], classes["n_tokens"], classes["n_items"])])
    ax.set_ylabel("mean per-token KL (nats)")
    ax.set_title("IN vs RL per-token KL by position class (item bootstrap 95 %)")
    ax.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "kl_classes.png", "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return ["kl_classes.png"]


def _vocab(m: str | os.PathLike[str] | ProbeModel) -> dict[str, int]:
    if isinstance(m, ProbeModel):
        return tokenizer_of(m.processor).get_vocab()
    from frankenlab.runtime.load import load_processor

    return tokenizer_of(load_processor(m)).get_vocab()


def _vocab_size(pm: ProbeModel) -> int:
    return int(pm.model.get_output_embeddings().weight.shape[0])


def run_kl(in_model: str | os.PathLike[str] | ProbeModel, rl_model: str | os.PathLike[str] | ProbeModel,
           tasks: Sequence[str], out: str | os.PathLike[str], settings: KLSettings | None = None, *,
           limit: int | None = None, dtype: str | None = None, device: str | None = None,
           device_map: str | Mapping[str, Any] | None = None, overwrite: bool = False, plots: bool = True,
           progress: ProgressFn | None = None) -> KLResult:
    """Per-token KL(RL‖IN) and KL(IN‖RL) on a shared response for every item, resumably, written to DIR."""
    from frankenlab.manifest import settings_key

    settings = settings or KLSettings()
    items, sources = load_math_tasks(tasks, limit=limit, seed=settings.seed)
    a_in, fp_in, path_in = describe_model(in_model)
    a_rl, fp_rl, path_rl = describe_model(rl_model)
    if a_in.family != a_rl.family or a_in.n_llm_layers != a_rl.n_llm_layers:
        raise ProbeError(f"IN ({a_in.family}, {a_in.n_llm_layers} layers) and RL ({a_rl.family}, "
                         f"{a_rl.n_llm_layers} layers) are not the same architecture.")
    if _vocab(in_model) != _vocab(rl_model):
        raise ProbeError("IN and RL have different tokenizers, so a shared response is not the same tokens for both; "
                         "the KL probe needs two checkpoints of one model (same tokenizer files).")
    inputs = {"IN": fp_in, "RL": fp_rl, **sources}
    key = settings_key({"settings": settings.model_dump(exclude={"top"}), "inputs": inputs, "limit": limit,
                        "dtype": load_dtype(dtype, device, device_map)})
    out_dir = Path(out)
    store = ItemStore(out_dir, NAME, key, overwrite=overwrite, final_names=tuple(
        f"kl_{t}.{ext}" for t in ("tokens", "classes", "items", "top") for ext in ("csv", "parquet")))
    todo = [it for it in items if it.key not in store.done]
    done = len(items) - len(todo)
    if progress is not None:
        progress(done, len(items))
    generator = None if settings.response == "gold" else ("RL" if settings.response == "rl" else "IN")
    lengths = {k: resolve_max_new_tokens(settings.max_new_tokens, k) for k in sorted({kind_of(task=it.task)
                                                                                       for it in items})}
    pm_rl: ProbeModel | None = rl_model if isinstance(rl_model, ProbeModel) else None
    pm_in: ProbeModel | None = in_model if isinstance(in_model, ProbeModel) else None
    if todo:  # a finished run is only re-tabulated: no weights loaded
        pm_rl = pm_rl or open_model(rl_model, dtype=dtype, device=device, device_map=device_map)
        pm_in = pm_in or open_model(in_model, dtype=dtype, device=device, device_map=device_map)
        if _vocab_size(pm_rl) != _vocab_size(pm_in):
            raise ProbeError(f"IN's output vocabulary has {_vocab_size(pm_in)} entries and RL's {_vocab_size(pm_rl)}; "
                             "per-token KL needs the same vocabulary in both models.")
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start:start + settings.batch_size]
        assert pm_rl is not None and pm_in is not None
        for record in kl_records(pm_rl, pm_in, chunk, settings):
            if record["status"] != "ok":
                log.warning("item %s failed: %s", record["key"], record["error"])
            store.add(record)
        done += len(chunk)
        if progress is not None:
            progress(done, len(items))
    wanted = {it.key for it in items}
    records = [r for r in store.records() if r["key"] in wanted]
    tokens, classes, items_table, top = kl_tables(records, settings)
    failed = [r for r in records if r["status"] != "ok"]
    decoding = None
    if generator is not None:
        pm_gen = pm_rl if generator == "RL" else pm_in
        decoding = probe_decoding(pm_gen, path_rl if generator == "RL" else path_in, lengths, out_dir)
    manifest = finish(
        out_dir, NAME, key,
        {"kl_tokens": (tokens, TOKEN_COLUMNS), "kl_classes": (classes, CLASS_COLUMNS),
         "kl_items": (items_table, ITEM_COLUMNS), "kl_top": (top, TOP_COLUMNS)},
        manifest_args={**settings.model_dump(), "in": path_in, "rl": path_rl, "tasks": list(tasks), "limit": limit,
                       "dtype": dtype, "device_map": device_map},
        inputs=inputs,
        extra={"n_items": len(items), "n_ok": len(records) - len(failed), "n_failed": len(failed),
               "failed": [{"id": r["key"], "error": r["error"]} for r in failed],
               "response": {"rl": "RL's greedy response", "in": "IN's greedy response",
                            "gold": "the gold answer text, tokenized, plus the end-of-turn token"}[settings.response],
               "decoding": decoding,
               "kl": "per position t (predicting token t+1), float32 log-softmax: kl_rl_in = KL(p_RL || p_IN), "
                     "kl_in_rl = KL(p_IN || p_RL), in nats",
               "position_class": "class of the predicted token t+1 when it is a response token, else of position t "
                                 "itself (own_class / next_class keep both): prompt (chat template "
                                 "and vision markers included), image (image placeholder tokens), reasoning (response "
                                 "before the final answer), "
                                 "answer (from the final answer's first token to the end of the response)",
               "answer_span": "last occurrence of the extracted answer in the response text, else of the gold "
                              "answer, else the last non-special token",
               "answer_span_counts": {h: sum(1 for r in records if r.get("answer_span") == h)
                                      for h in ("extracted", "gold", "last_token")},
               "intervals": "cluster bootstrap 95 % over items (items resampled, the class token-mean recomputed)",
               "prompt_encoding": "RL's processor"},
        plots=(lambda d: kl_classes_plot(classes, d)) if plots else None,
    )
    return KLResult(tokens, classes, items_table, top, failed, manifest, out_dir)
