"""The small RL world the GRPO tests share: a mini-world IN after a little SFT, and count prompts."""

from __future__ import annotations

from pathlib import Path


def sft_world(root: Path) -> tuple[Path, Path]:
    """root/in: a mini-world checkpoint after 60 SFT steps (so GRPO groups mix right and wrong answers);
    returns (root, the count task file)."""
    from frankenlab.miniworld import export_tasks, make_split
    from frankenlab.miniworld.model import (
        build_miniworld_model,
        build_miniworld_processor,
        build_miniworld_tokenizer,
        save_pair_member,
    )
    from frankenlab.miniworld.sft import SFTConfig, encode_examples, train_sft

    tok = build_miniworld_tokenizer()
    proc = build_miniworld_processor(tok)
    model = build_miniworld_model(tok, seed=0)
    items = make_split(64, 0, ["count"])
    train_sft(model, encode_examples(proc, [(it.question, it.image, it.answer) for it in items]),
              SFTConfig(steps=60, batch_size=16, lr=3e-3, warmup=5), pad_id=tok.pad_token_id)
    save_pair_member(model, proc, root / "in")
    return root, export_tasks(make_split(16, 1, ["count"]), root / "tasks", "count")
