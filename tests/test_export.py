"""Exports are complete Hugging Face directories: transformers loads config, tokenizer (with its chat template),
generation config and weights, and computes jaxpref's logits / reward scores; training checkpoints export
through the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from hf_fixtures import CHAT_TEMPLATE, hf_logits, tiny_bpe_tokenizer, tiny_hf_model
from jaxpref import models, sharding
from jaxpref.convert import main as convert_main
from jaxpref.models import reward as R

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "how do I bake bread?"},
            {"role": "assistant", "content": "Mix flour, water and yeast."}, {"role": "user", "content": "hello"}]


def _perturbed(params, seed=0, scale=0.02):
    """The params moved off the source checkpoint, so an export that copied the source's files would fail."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def _chat_batch(tokenizer):
    """Three chat renderings of different lengths, right-padded: ``(ids [3, T], mask [3, T])``."""
    rows = [tokenizer.apply_chat_template(MESSAGES[: n], tokenize=True, add_generation_prompt=True)["input_ids"]
            for n in (2, 3, 4)]
    t = max(map(len, rows))
    ids = np.zeros((3, t), np.int64)
    mask = np.zeros((3, t), np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


def _forward(model, params, ids, mask):
    return np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


@pytest.mark.parametrize("family", ["llama2", "mistral"])
def test_export_is_a_complete_hf_directory(family, tmp_path):
    # a source checkpoint with a tokenizer (chat template) and a non-default generation config
    src = tmp_path / "src"
    tiny_hf_model(family, seed=1).save_pretrained(str(src))
    source_tok = tiny_bpe_tokenizer(src)
    transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=True, temperature=0.7,
                                  max_new_tokens=17).save_pretrained(str(src))
    model, params = models.from_pretrained(str(src))
    params = _perturbed(params)
    out = str(tmp_path / "export")
    assert models.save_pretrained(model, params, out, source_dir=str(src)) == out

    raw = json.load(open(os.path.join(out, "config.json")))
    cls = {"llama2": "Llama", "mistral": "Mistral"}[family]
    assert raw["architectures"] == [f"{cls}ForCausalLM"] and raw["model_type"] == cls.lower()
    assert raw["dtype"] == "float32" and "torch_dtype" not in raw  # the dtype once
    assert type(transformers.AutoConfig.from_pretrained(out)).__name__ == f"{cls}Config"
    if family == "mistral":
        assert raw["sliding_window"] == 5

    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHAT_TEMPLATE
    rendered = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert rendered == source_tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (1, 2, len(source_tok))

    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert gen["temperature"] == 0.7 and gen["max_new_tokens"] == 17 and gen["do_sample"] is True

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == f"{cls}ForCausalLM"
    ids, mask = _chat_batch(tok)
    diff = np.abs(hf_logits(hf, ids, mask) - _forward(model, params, ids, mask)) * mask[..., None]
    assert diff.max() <= 1e-4, diff.max()
    if family == "mistral":
        assert ids.shape[1] > 5  # through the sliding window


def test_export_without_source_takes_the_tokenizer_and_derives_the_generation_config(tmp_path):
    cfg = models.preset("tiny_mistral", vocab_size=300, eos_token_id=2, bos_token_id=1)
    model, params = models.LlamaForCausalLM(cfg), models.init_params(cfg, 3)
    tok_dir = tmp_path / "tok"
    tiny_bpe_tokenizer(tok_dir)
    out = models.save_pretrained(model, params, str(tmp_path / "out"), tokenizer_dir=str(tok_dir),
                                 dtype=jnp.bfloat16)
    raw = json.load(open(os.path.join(out, "config.json")))
    assert raw["model_type"] == "mistral" and raw["dtype"] == "bfloat16" and "torch_dtype" not in raw
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = _chat_batch(transformers.AutoTokenizer.from_pretrained(out))
    bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    diff = np.abs(hf_logits(hf, ids, mask) - _forward(model, bf16, ids, mask)) * mask[..., None]
    assert diff.max() <= 1e-4, diff.max()
    # a tokenizer with more tokens than the model's vocabulary is refused
    small = models.preset("tiny_llama", vocab_size=200)
    with pytest.raises(models.CheckpointError, match="300 tokens but the model's vocabulary has 200"):
        models.save_pretrained(models.LlamaForCausalLM(small), models.init_params(small, 0), str(tmp_path / "x"),
                               tokenizer_dir=str(tok_dir))


def _rm(vocab_size, seed=0):
    cfg = models.preset("tiny_llama", vocab_size=vocab_size, num_hidden_layers=2, eos_token_id=2, bos_token_id=1)
    return R.RewardModel(cfg), R.from_causal_lm(models.init_params(cfg, seed), cfg, seed=seed)


TEXTS = ["hello", "how do I bake bread? Mix flour", "The quick brown fox jumps over the lazy dog."]


@pytest.mark.parametrize("extra_vocab", [0, 20])
def test_reward_model_export_scores_a_right_padded_batch_like_jaxpref(extra_vocab, tmp_path):
    """The tokenizer pads with EOS; the export must declare (and its tokenizer use) a pad id that is not EOS.
    ``extra_vocab=0``: the vocabulary is full, so the export adds an embedding row for the pad token."""
    tok_dir = tmp_path / "tok"
    tok = tiny_bpe_tokenizer(tok_dir)
    assert tok.pad_token_id == tok.eos_token_id
    model, params = _rm(len(tok) + extra_vocab)
    out = models.save_pretrained(model, params, str(tmp_path / "rm"), tokenizer_dir=str(tok_dir))

    raw = json.load(open(os.path.join(out, "config.json")))
    assert raw["architectures"] == ["LlamaForSequenceClassification"] and "torch_dtype" not in raw
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.num_labels == 1
    assert hf.config.pad_token_id == hf_tok.pad_token_id != hf_tok.eos_token_id
    assert hf.config.vocab_size == max(len(tok) + extra_vocab, hf_tok.pad_token_id + 1)

    enc = hf_tok([t + hf_tok.eos_token for t in TEXTS], padding=True, padding_side="right", return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = mask.sum(1)
    assert len(set(lengths)) == 3 and (ids[np.arange(3), lengths - 1] == tok.eos_token_id).all()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()

    # jaxpref's read-out: the score at the last response token (the response = everything after 2 prompt tokens);
    # jaxpref pads with the tokenizer's own pad id (here EOS): its read-out never looks at pad ids
    jax_ids = np.where(mask > 0, ids, tok.pad_token_id)
    scores = np.asarray(model.apply({"params": params}, jnp.asarray(jax_ids), attention_mask=jnp.asarray(mask)))
    loss_mask = mask.copy()
    loss_mask[:, :2] = 0
    end = np.asarray(R.last_response_token_mask(loss_mask, np.where(mask > 0, 1, 0)))
    ours = (scores * end).sum(1)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    alone = [float(model.apply({"params": params}, jnp.asarray(ids[i : i + 1, : lengths[i]]))[0, -1]) for i in range(3)]
    np.testing.assert_allclose(ours, alone, atol=1e-5, rtol=0)

    # the negative control: declaring pad = EOS (the tokenizer's own pad) makes transformers score a padded row at
    # a pad position, not at the sequence's end
    hf.config.pad_token_id = tok.eos_token_id
    eos_padded = np.where(mask > 0, ids, tok.eos_token_id)
    with torch.no_grad():
        wrong = hf(input_ids=torch.tensor(eos_padded), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    assert np.abs(wrong - ours)[lengths < ids.shape[1]].min() > 1e-4


def test_reward_model_export_keeps_a_distinct_pad_without_a_tokenizer(tmp_path):
    model, params = _rm(64, seed=1)
    model = R.RewardModel(model.config.replace(pad_token_id=0))
    out = models.save_pretrained(model, params, str(tmp_path / "a"))
    assert json.load(open(os.path.join(out, "config.json")))["pad_token_id"] == 0
    model = R.RewardModel(model.config.replace(pad_token_id=2))  # pad == EOS: a new row, id 64
    out = models.save_pretrained(model, params, str(tmp_path / "b"))
    raw = json.load(open(os.path.join(out, "config.json")))
    assert raw["pad_token_id"] == 64 and raw["vocab_size"] == 65
    back, back_params = R.from_pretrained(out)
    ids = np.array([[5, 6, 7, 2, 64, 64], [8, 9, 10, 11, 12, 2]])
    mask = (ids != 64).astype(np.int32)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    jax_ids = np.minimum(ids, 63)  # jaxpref's own model has 64 rows; pads are masked either way
    scores = np.asarray(model.apply({"params": params}, jnp.asarray(jax_ids), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(theirs, [scores[0, 3], scores[1, 5]], atol=1e-5, rtol=0)


# ---- training checkpoints -> HF ------------------------------------------------------------------------


def _save_like_the_trainer(directory, step, state):
    """Save with the trainer's own ``Checkpointer`` (orbax CheckpointManager, items ``state`` and ``meta``)."""
    from jaxpref.train.checkpoint import Checkpointer

    checkpointer = Checkpointer(str(directory), max_to_keep=3, async_save=False)
    checkpointer.save(step, state, {"step": step, "data": {}})
    checkpointer.close()


def _train_state(params, seed):
    from jaxpref.train.state import TrainState

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    return TrainState.create(params, tx, jax.random.PRNGKey(seed))


def test_flax_to_hf_from_a_training_checkpoint(tmp_path, capsys):
    src = tmp_path / "base"
    tiny_hf_model("mistral", seed=4).save_pretrained(str(src))
    tiny_bpe_tokenizer(src)
    model, base = models.from_pretrained(str(src))
    workdir = tmp_path / "run"
    trained = {10: _perturbed(base, 10), 20: _perturbed(base, 20)}
    # as in training, the params of step 20 are sharded over a (data=2, fsdp=2, tensor=2) mesh of host devices
    mesh = sharding.make_mesh(2, 2, 2)
    placed = jax.device_put(trained[20], sharding.logical_to_sharding(models.logical_axes(model.config), mesh))
    assert len(placed["layers_0"]["mlp"]["up_proj"]["kernel"].sharding.device_set) == 8
    _save_like_the_trainer(workdir / "checkpoints", 10, _train_state(trained[10], 10))
    _save_like_the_trainer(workdir / "checkpoints", 20, _train_state(placed, 20))
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    ids, mask = _chat_batch(tok)

    def check(out, params):
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert type(hf).__name__ == "MistralForCausalLM"
        diff = np.abs(hf_logits(hf, ids, mask) - _forward(model, params, ids, mask)) * mask[..., None]
        assert diff.max() <= 1e-4, diff.max()
        assert transformers.AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE

    out20 = str(tmp_path / "hf20")
    assert convert_main(["flax-to-hf", "--src", str(workdir / "checkpoints" / "20"), "--config-dir", str(src),
                         "--dst", out20]) == 0
    check(out20, trained[20])
    out10 = str(tmp_path / "hf10")
    assert convert_main(["flax-to-hf", "--src", str(workdir), "--step", "10", "--config-dir", str(src),
                         "--dst", out10]) == 0
    check(out10, trained[10])

    # without --config-dir: a missing config is one error line; a finished run's hf_export is used
    capsys.readouterr()
    assert convert_main(["flax-to-hf", "--src", str(workdir), "--dst", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--config-dir" in err and err.count("\n") == 1
    models.save_pretrained(model, trained[20], str(workdir / "hf_export"), source_dir=str(src))
    out_latest = str(tmp_path / "latest")
    assert convert_main(["flax-to-hf", "--src", str(workdir), "--dst", out_latest]) == 0  # latest step: 20
    check(out_latest, trained[20])

    assert convert_main(["flax-to-hf", "--src", str(workdir), "--step", "7", "--config-dir", str(src),
                         "--dst", str(tmp_path / "y")]) == 2
    assert "no checkpoint of step 7; it has steps [10, 20]" in capsys.readouterr().err
    # a config of another model: the shapes do not fit
    other = tmp_path / "other"
    tiny_hf_model("llama2", seed=0, hidden_size=32).config.save_pretrained(str(other))
    assert convert_main(["flax-to-hf", "--src", str(workdir), "--config-dir", str(other),
                         "--dst", str(tmp_path / "z")]) == 2
    assert "has shape" in capsys.readouterr().err


def test_flax_to_hf_of_a_combined_reward_model_checkpoint(tmp_path, capsys):
    """APO saves {"policy": TrainState, "rm": TrainState}; --part rm exports the reward model."""
    tok_dir = tmp_path / "tok"
    tok = tiny_bpe_tokenizer(tok_dir)
    rm_model, rm_params = _rm(len(tok) + 4, seed=2)
    lm_cfg = rm_model.config
    lm_params = models.init_params(lm_cfg, 1)
    state = {"policy": _train_state(lm_params, 1), "rm": _train_state(rm_params, 2)}
    _save_like_the_trainer(tmp_path / "run" / "checkpoints", 3, state)
    cfg_dir = tmp_path / "cfg"
    models.save_pretrained(models.LlamaForCausalLM(lm_cfg), lm_params, str(cfg_dir), tokenizer_dir=str(tok_dir))

    assert convert_main(["flax-to-hf", "--src", str(tmp_path / "run"), "--config-dir", str(cfg_dir),
                         "--dst", str(tmp_path / "x")]) == 2
    assert "--part policy" in capsys.readouterr().err
    out = str(tmp_path / "rm")
    assert convert_main(["flax-to-hf", "--src", str(tmp_path / "run"), "--part", "rm", "--config-dir", str(cfg_dir),
                         "--dst", out]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = hf_tok([t + hf_tok.eos_token for t in TEXTS], padding=True, padding_side="right", return_tensors="np")
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(enc["input_ids"]),
                    attention_mask=torch.tensor(enc["attention_mask"])).logits[:, 0].numpy()
    lengths = enc["attention_mask"].sum(1)
    alone = [float(rm_model.apply({"params": rm_params}, jnp.asarray(enc["input_ids"][i : i + 1, : lengths[i]]))[0, -1])
             for i in range(3)]
    np.testing.assert_allclose(theirs, alone, atol=1e-5, rtol=0)
