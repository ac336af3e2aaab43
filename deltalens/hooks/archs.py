"""Per-architecture maps from the hook vocabulary to Hugging Face module paths (data, not code).

Each :class:`ArchSpec` says where a hook name lives in a ``*ForCausalLM`` module tree:
``Site(module path, "input" | "output", tuple index or None, view)``; ``{L}`` is the block index.
``view`` says how the module's tensor becomes the hook's: ``None`` (as it is), ``"heads"`` /
``"kv_heads"`` (``[batch, pos, heads * d_head] -> [batch, pos, heads, d_head]``), or ``"q"`` / ``"k"``
/ ``"v"`` (GPT-2's fused ``c_attn`` output: that third, split into heads). ``where="attention"``
marks hooks computed inside the attention function of that module (:mod:`deltalens.hooks.attention`).
Derived views read a module's input and, when edited, replace its output: ``"scale"`` /
``"normalized"`` (a norm's ``sqrt(mean(x²) + eps)`` and ``x / scale`` — centred first for LayerNorm —
before its weight, as TransformerLens's folded norms) and ``"result"`` (each head's write through the
output projection, ``[batch, pos, head, d_model]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Site(NamedTuple):
    """Where one hook lives: a module, its input or output, which tuple element, and the view."""

    path: str
    where: str
    idx: int | None = None
    view: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    """Where each hook of the vocabulary lives in one architecture's module tree."""

    name: str
    layers: str
    sites: dict[str, Site] = field(default_factory=dict)
    lora_targets: tuple[str, ...] = ()
    norm: str = "rms"
    """``"rms"`` (``x / scale * w``), ``"rms_1p"`` (Gemma: ``x / scale * (1 + w)``) or ``"layernorm"``."""

    def site(self, hook: str) -> Site:
        """The site of a hook name such as ``blocks.3.hook_resid_post``."""
        if hook.startswith("blocks."):
            _, layer, rest = hook.split(".", 2)
            site = Site(*self.sites[rest])
            return site._replace(path=site.path.replace("{L}", layer))
        return Site(*self.sites[hook])

    def has(self, hook: str) -> bool:
        """Whether this architecture has the hook (``blocks.{L}.`` prefixes aside)."""
        return (hook.split(".", 2)[2] if hook.startswith("blocks.") else hook) in self.sites


def _norm_sites(prefix: str, path: str) -> dict[str, Site]:
    return {f"{prefix}.hook_scale": (path, "input", None, "scale"), f"{prefix}.hook_normalized": (path, "input", None, "normalized")}


def _decoder(name: str, gemma: bool = False) -> ArchSpec:
    layer = "model.layers.{L}"
    sites: dict[str, Site] = {
        "hook_embed": ("model.embed_tokens", "output", None),
        "hook_resid_pre": (layer, "input", None),
        **_norm_sites("ln1", f"{layer}.input_layernorm"),
        "attn.hook_q": (f"{layer}.self_attn.q_proj", "output", None, "heads"),
        "attn.hook_k": (f"{layer}.self_attn.k_proj", "output", None, "kv_heads"),
        "attn.hook_v": (f"{layer}.self_attn.v_proj", "output", None, "kv_heads"),
        "attn.hook_rot_q": (f"{layer}.self_attn", "attention", None),
        "attn.hook_rot_k": (f"{layer}.self_attn", "attention", None),
        "attn.hook_attn_scores": (f"{layer}.self_attn", "attention", None),
        "attn.hook_pattern": (f"{layer}.self_attn", "attention", None),
        "attn.hook_z": (f"{layer}.self_attn.o_proj", "input", None, "heads"),
        "attn.hook_result": (f"{layer}.self_attn.o_proj", "input", None, "result"),
        "hook_attn_out": (f"{layer}.self_attn", "output", 0),
        "hook_resid_mid": (f"{layer}.post_attention_layernorm", "input", None),
        **_norm_sites("ln2", f"{layer}.post_attention_layernorm"),
        "mlp.hook_pre": (f"{layer}.mlp.gate_proj", "output", None),
        "mlp.hook_pre_linear": (f"{layer}.mlp.up_proj", "output", None),
        "mlp.hook_post": (f"{layer}.mlp.down_proj", "input", None),
        "hook_mlp_out": (f"{layer}.mlp", "output", None),
        "hook_resid_post": (layer, "output", None),
        **_norm_sites("ln_final", "model.norm"),
    }
    if gemma:  # Gemma 3 normalises each sublayer's output before adding it to the residual
        sites["hook_attn_out"] = (f"{layer}.post_attention_layernorm", "output", None)
        sites["hook_resid_mid"] = (f"{layer}.pre_feedforward_layernorm", "input", None)
        sites.update(_norm_sites("ln2", f"{layer}.pre_feedforward_layernorm"))
        sites["hook_mlp_out"] = (f"{layer}.post_feedforward_layernorm", "output", None)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return ArchSpec(
        name=name, layers="model.layers", sites=sites, lora_targets=targets, norm="rms_1p" if gemma else "rms"
    )


GPT2 = ArchSpec(
    name="gpt2",
    layers="transformer.h",
    sites={
        "hook_embed": ("transformer.wte", "output", None),
        "hook_pos_embed": ("transformer.wpe", "output", None),
        "hook_resid_pre": ("transformer.h.{L}", "input", None),
        **_norm_sites("ln1", "transformer.h.{L}.ln_1"),
        "attn.hook_q": ("transformer.h.{L}.attn.c_attn", "output", None, "q"),
        "attn.hook_k": ("transformer.h.{L}.attn.c_attn", "output", None, "k"),
        "attn.hook_v": ("transformer.h.{L}.attn.c_attn", "output", None, "v"),
        "attn.hook_attn_scores": ("transformer.h.{L}.attn", "attention", None),
        "attn.hook_pattern": ("transformer.h.{L}.attn", "attention", None),
        "attn.hook_z": ("transformer.h.{L}.attn.c_proj", "input", None, "heads"),
        "attn.hook_result": ("transformer.h.{L}.attn.c_proj", "input", None, "result"),
        "hook_attn_out": ("transformer.h.{L}.attn", "output", 0),
        "hook_resid_mid": ("transformer.h.{L}.ln_2", "input", None),
        **_norm_sites("ln2", "transformer.h.{L}.ln_2"),
        "mlp.hook_pre": ("transformer.h.{L}.mlp.c_fc", "output", None),
        "mlp.hook_post": ("transformer.h.{L}.mlp.c_proj", "input", None),
        "hook_mlp_out": ("transformer.h.{L}.mlp", "output", None),
        "hook_resid_post": ("transformer.h.{L}", "output", None),
        **_norm_sites("ln_final", "transformer.ln_f"),
    },
    lora_targets=("c_attn", "c_proj", "c_fc"),
    norm="layernorm",
)

ARCHS: dict[str, ArchSpec] = {
    "gpt2": GPT2,
    "llama": _decoder("llama"),
    "mistral": _decoder("mistral"),
    "qwen2": _decoder("qwen2"),
    "qwen3": _decoder("qwen3"),
    "gemma3_text": _decoder("gemma3_text", gemma=True),
}
"""Supported ``config.model_type`` values."""


def n_layers_of(config: Any) -> int:
    """The number of transformer blocks of a HF config (of its ``text_config`` for a multimodal one):
    ``num_hidden_layers``, or GPT-2's ``n_layer``."""
    cfg = getattr(config, "text_config", None) or config
    return int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)


def arch_for(config) -> ArchSpec:
    """The :class:`ArchSpec` of a HF config.

    Raises:
        ValueError: the architecture is not supported (the message lists the supported ones).
    """
    model_type = getattr(config, "model_type", None)
    if model_type == "gemma3" and hasattr(config, "text_config"):
        model_type = "gemma3_text"
    if model_type not in ARCHS:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({getattr(config, 'architectures', None)}); "
            f"deltalens supports model_type in {sorted(ARCHS)} "
            "(GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
            "Gemma3ForCausalLM)"
        )
    return ARCHS[model_type]
