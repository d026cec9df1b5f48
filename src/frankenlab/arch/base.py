"""The adapter protocol: everything frankenlab knows about one architecture family, as tables.

Canonical tensor names are the transformers-5 in-memory names (`model.language_model.layers.N...`,
`model.visual.blocks.N...`, `lm_head.weight`): they equal `model.named_parameters()` of a loaded
model, so analyses, merges in memory and freezing all speak one naming. On-disk layouts are
translated at the I/O edge by `to_canonical` / `to_layout`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from frankenlab.errors import ArchitectureError

SECTIONS = ("vision", "projector", "llm", "embed", "head", "other")
LAYOUTS = ("hub", "transformers5")

# Module-name fragment → module kind.
KIND_NAMES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "out_proj": "proj",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "qkv": "qkv", "proj": "proj", "fc1": "fc1", "fc2": "fc2",
    "linear_fc1": "fc1", "linear_fc2": "fc2",
}
_ATTN_KINDS = {"q", "k", "v", "o", "qkv", "proj"}
_MLP_KINDS = {"gate", "up", "down", "fc1", "fc2"}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor sits in the model, in architecture-free terms."""

    name: str  # canonical name
    section: str  # one of SECTIONS
    layer: int | None  # unified index (vision < 0, projector 0, LLM > 0); None outside blocks
    block: int | None  # index within its own stack (LLM layer k, vision block k)
    kind: str  # q/k/v/o/gate/up/down, qkv/proj/fc1/fc2, norm, embed, head, projector, ...
    is_norm: bool

    @property
    def group(self) -> str:
        """attn / mlp / norm / projector / embed / head / other: coarser than kind, for plots."""
        if self.is_norm:
            return "norm"
        if self.kind in _ATTN_KINDS:
            return "attn"
        if self.kind in _MLP_KINDS:
            return "mlp"
        return self.kind


@dataclass(frozen=True)
class Rule:
    """Claims canonical names matching `pattern` for one section; `(?P<idx>\\d+)` is the block."""

    pattern: str
    section: str
    kind: str | None = None  # fixed kind; None = from the `mod` group via KIND_NAMES
    stack: str | None = None  # "llm" or "vision" when the name carries a block index
    norm: bool = False

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


def decoder_rules(prefix: str) -> tuple[Rule, ...]:
    """Rules of a Llama/Qwen-style decoder whose modules live under `prefix` (e.g. `model.language_model`).

    Every family in this package uses the same decoder naming; only the prefix differs.
    """
    p = prefix.replace(".", r"\.")
    layer = rf"^{p}\.layers\.(?P<idx>\d+)\."
    w = r"(weight|bias)$"
    return (
        Rule(layer + r"self_attn\.(?P<mod>[qkvo]_proj)\." + w, "llm", stack="llm"),
        Rule(layer + r"mlp\.(?P<mod>gate_proj|up_proj|down_proj)\." + w, "llm", stack="llm"),
        Rule(layer + r"(input_layernorm|post_attention_layernorm|self_attn\.[qk]_norm)\.weight$", "llm",
             kind="norm", stack="llm", norm=True),
        Rule(rf"^{p}\.embed_tokens\.weight$", "embed", kind="embed"),
        Rule(rf"^{p}\.norm\.weight$", "other", kind="norm", norm=True),
        Rule(r"^lm_head\.weight$", "head", kind="head"),
    )


def _get(config: dict[str, Any], *keys: str) -> Any:
    """First present key, looking in the config and then in its text/vision sub-configs."""
    for key in keys:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


class Adapter:
    """Base class; a family subclass fills the class-level tables and nothing else if it can."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    has_vision: ClassVar[bool] = False
    # (regex on the on-disk hub name, replacement) tried in order; first match renames.
    hub_to_canonical: ClassVar[tuple[tuple[str, str], ...]] = ()
    # (regex on canonical, replacement) for writing the hub layout.
    canonical_to_hub: ClassVar[tuple[tuple[str, str], ...]] = ()
    rules: ClassVar[tuple[Rule, ...]] = ()
    # Module paths in a loaded transformers-5 model (= canonical name prefixes).
    llm_layers_path: ClassVar[str] = "model.layers"
    vision_blocks_path: ClassVar[str | None] = None
    projector_paths: ClassVar[tuple[str, ...]] = ()
    embed_path: ClassVar[str] = "model.embed_tokens"
    final_norm_path: ClassVar[str] = "model.norm"
    lm_head_path: ClassVar[str] = "lm_head"
    llm_layers_keys: ClassVar[tuple[str, ...]] = ("text_config.num_hidden_layers", "num_hidden_layers")
    vision_blocks_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        n_llm = _get(config, *self.llm_layers_keys)
        if not isinstance(n_llm, int) or n_llm <= 0:
            raise ArchitectureError(
                f"{self.family}: config.json gives no LLM layer count (looked for "
                f"{', '.join(self.llm_layers_keys)})."
            )
        self.n_llm_layers: int = n_llm
        self.n_vision_blocks: int = 0
        if self.has_vision:
            n_vis = _get(config, *self.vision_blocks_keys)
            if not isinstance(n_vis, int) or n_vis <= 0:
                raise ArchitectureError(
                    f"{self.family}: config.json gives no vision block count (looked for "
                    f"{', '.join(self.vision_blocks_keys)})."
                )
            self.n_vision_blocks = n_vis
        self._rules = [(r, r.compiled()) for r in self.rules]
        self._h2c = [(re.compile(a), b) for a, b in self.hub_to_canonical]
        self._c2h = [(re.compile(a), b) for a, b in self.canonical_to_hub]

    # -- names -------------------------------------------------------------------------------
    def to_canonical(self, name: str) -> str:
        for pattern, repl in self._h2c:
            if pattern.search(name):
                return pattern.sub(repl, name, count=1)
        return name

    def to_layout(self, canonical: str, layout: str) -> str:
        if layout not in LAYOUTS:
            raise ArchitectureError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
        if layout == "transformers5":
            return canonical
        for pattern, repl in self._c2h:
            if pattern.search(canonical):
                return pattern.sub(repl, canonical, count=1)
        return canonical

    def detect_layout(self, names: list[str]) -> str:
        """'transformers5' only when the names are in-memory ones and differ from the hub's."""
        if not self.hub_to_canonical:
            return "hub"
        renamed = any(self.to_canonical(n) != n for n in names)
        return "hub" if renamed else "transformers5"

    # -- classification ----------------------------------------------------------------------
    def unified_index(self, stack: str, block: int) -> int:
        if stack == "llm":
            return block + 1
        if stack == "vision":
            return block - self.n_vision_blocks
        if stack == "projector":
            return 0
        raise ArchitectureError(f"unknown stack {stack!r}")

    def classify(self, canonical: str) -> TensorInfo:
        hits = [(rule, m) for rule, rx in self._rules if (m := rx.search(canonical))]
        if not hits:
            raise ArchitectureError(
                f"{self.family}: tensor {canonical!r} is claimed by no rule of the adapter. The "
                "checkpoint has a part the adapter does not know; extend the adapter's rules "
                "(docs/adding-an-architecture.md)."
            )
        if len(hits) > 1:
            raise ArchitectureError(
                f"{self.family}: tensor {canonical!r} is claimed by {len(hits)} rules "
                f"({', '.join(r.pattern for r, _ in hits)}); the adapter's table is ambiguous."
            )
        rule, m = hits[0]
        kind = rule.kind
        if kind is None:
            mod = m.group("mod")
            kind = KIND_NAMES.get(mod)
            if kind is None:
                raise ArchitectureError(f"{self.family}: no module kind for {mod!r} in {canonical!r}.")
        block: int | None = None
        layer: int | None = None
        if rule.stack is not None:
            block = int(m.group("idx"))
            limit = self.n_llm_layers if rule.stack == "llm" else self.n_vision_blocks
            if block >= limit:
                raise ArchitectureError(
                    f"{self.family}: tensor {canonical!r} names {rule.stack} block {block}, but "
                    f"config.json declares {limit}; config and weights disagree."
                )
            layer = self.unified_index(rule.stack, block)
        elif rule.section == "projector":
            layer = 0
        return TensorInfo(canonical, rule.section, layer, block, kind, rule.norm)

    # -- loaded-model module paths -----------------------------------------------------------
    def llm_layer_path(self, block: int) -> str:
        return f"{self.llm_layers_path}.{block}"

    def vision_block_path(self, block: int) -> str:
        if self.vision_blocks_path is None:
            raise ArchitectureError(f"{self.family} has no vision encoder.")
        return f"{self.vision_blocks_path}.{block}"

    def decoder_layers(self, model: Any) -> Any:
        """The ModuleList of LLM decoder layers in a loaded model."""
        return model.get_submodule(self.llm_layers_path)

    def vision_blocks(self, model: Any) -> Any:
        if self.vision_blocks_path is None:
            raise ArchitectureError(f"{self.family} has no vision encoder.")
        return model.get_submodule(self.vision_blocks_path)

    def image_features(self, model: Any, inputs: dict[str, Any]) -> Any | None:
        """The model's own encoding of the images in `inputs` (processor outputs), or None where the model
        takes no pre-encoded images.

        The result goes back to the model as ``mm_encoder_outputs={"image": ...}`` in place of the pixels
        (forward and generate), so one encoding can serve many batch rows. Generic over transformers-5
        VLMs: `get_image_features` with the inputs its signature names, as `generate` encodes before the
        prefill; a family whose forward cannot take the result overrides this to return None.
        """
        import inspect

        encode = getattr(model, "get_image_features", None)
        if not self.has_vision or encode is None or "pixel_values" not in inputs:
            return None
        if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
            return None
        names = inspect.signature(encode).parameters
        if "pixel_values" not in names:
            return None
        return encode(**{k: v for k, v in inputs.items() if k in names}, return_dict=True)

    def module_path_for(self, info: TensorInfo) -> str | None:
        """Module path owning a layer tensor in a loaded model (None outside blocks)."""
        if info.block is None:
            return None
        if info.section == "llm":
            return self.llm_layer_path(info.block)
        return self.vision_block_path(info.block)
