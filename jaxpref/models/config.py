"""Decoder configuration mirroring Hugging Face's ``LlamaConfig``/``MistralConfig`` fields, and presets.

One :class:`ModelConfig` describes Llama 1/2 (multi-head attention), Llama 3/3.1 (grouped-query
attention, ``rope_theta``, ``llama3`` rope scaling), Mistral v0.1 (GQA + sliding window) and later
Mistral (no window). Field names are HF's so ``config.json`` maps one to one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture (HF field names) plus jaxpref's compute settings.

    Architecture fields are those of HF ``LlamaConfig``/``MistralConfig``. Compute fields:

    * ``dtype``: activation/compute dtype name (``"float32"``, ``"bfloat16"``).
    * ``param_dtype``: parameter storage dtype name.
    * ``remat_policy``: per-layer ``jax.checkpoint`` policy: ``"none"`` (store all activations),
      ``"full"`` (recompute the layer), ``"dots"`` (save matmul outputs),
      ``"dots_with_no_batch_dims"`` (save weight matmuls only).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # frozen dict: (("rope_type", "llama3"), ...)
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    # compute settings (not HF fields)
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"Unsupported model_type {self.model_type!r}; jaxpref supports {list(SUPPORTED_MODEL_TYPES)}."
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"Unknown remat_policy {self.remat_policy!r}; choose one of {list(REMAT_POLICIES)}.")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.kv_heads}."
            )

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return tuple(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else (self.eos_token_id,)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings included)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        hd, h, kv = self.dim_per_head, self.num_attention_heads, self.kv_heads
        attn = d * hd * (h + 2 * kv) + h * hd * d
        layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + d

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies ``[head_dim // 2]`` (float32), with ``linear``/``llama3`` scaling as in HF."""
        dim = self.dim_per_head
        inv = (1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))).astype(
            np.float32
        )
        scaling = self.rope_scaling_dict
        if not scaling:
            return inv
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            return inv
        if kind == "linear":
            return (inv / np.float32(scaling["factor"])).astype(np.float32)
        if kind == "llama3":
            factor = scaling["factor"]
            low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
            old_len = scaling["original_max_position_embeddings"]
            low_wavelen, high_wavelen = old_len / low, old_len / high
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old_len / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        raise ValueError(f"Unsupported rope scaling type {kind!r}; jaxpref supports default, linear and llama3.")

    # ---- HF config.json <-> ModelConfig ------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **compute) -> "ModelConfig":
        """Build from a parsed HF ``config.json``. Accepts both ``rope_theta``/``rope_scaling`` (older files)
        and transformers 5's ``rope_parameters``."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            arch = hf.get("architectures")
            raise ValueError(
                f"Unsupported architecture: config.json has model_type={model_type!r} (architectures={arch}); "
                f"jaxpref converts {list(SUPPORTED_MODEL_TYPES)} models."
            )
        rope_params = dict(hf.get("rope_parameters") or {})
        rope_theta = rope_params.pop("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or rope_params or None
        if scaling:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            scaling = None if kind == "default" else tuple(sorted(scaling.items()))
        fields = {f.name for f in dataclasses.fields(cls)}
        not_hf = {"rope_theta", "rope_scaling", "dtype", "param_dtype", "remat_policy"}
        kwargs = {k: v for k, v in hf.items() if k in fields and k not in not_hf}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = tuple(kwargs["eos_token_id"])
        return cls(**kwargs, rope_theta=float(rope_theta), rope_scaling=scaling, **compute)

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as ``LlamaForCausalLM``/``MistralForCausalLM``."""
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}[self.model_type]
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope_parameters.update(dict(self.rope_scaling))
            rope_parameters["rope_type"] = rope_parameters.pop("type", rope_parameters.get("rope_type"))
        out = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.dim_per_head,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        return out


# ---- presets: the real shapes, and tiny ones for tests ----------------------------------------------

PRESETS: dict[str, ModelConfig] = {
    "llama2_7b": ModelConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=4096, model_type="llama", bos_token_id=1, eos_token_id=2,
    ),
    "mistral_7b_v01": ModelConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=32768, sliding_window=4096, model_type="mistral", bos_token_id=1, eos_token_id=2,
    ),
    "mistral_7b_instruct_v03": ModelConfig(
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=1000000.0,
        max_position_embeddings=32768, sliding_window=None, model_type="mistral", bos_token_id=1, eos_token_id=2,
    ),
    "llama3_8b": ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=8192, model_type="llama", bos_token_id=128000, eos_token_id=128001,
    ),
    "llama31_8b": ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                      ("original_max_position_embeddings", 8192), ("rope_type", "llama3")),
        max_position_embeddings=131072, model_type="llama", bos_token_id=128000, eos_token_id=128001,
    ),
    "llama_1b_bench": ModelConfig(  # ~1.1B, TinyLlama-like shapes, for conversion/throughput benchmarks
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5, max_position_embeddings=2048,
    ),
    "tiny_llama": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512,
    ),
    "tiny_mistral": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, sliding_window=8, model_type="mistral",
    ),
    "bench_32k": ModelConfig(  # the DPO-vs-TRL benchmark model (bench/dpo_vs_trl.py)
        vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=1024,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset (see :data:`PRESETS`), optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; available: {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides)
