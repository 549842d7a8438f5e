"""Your model, your data: a model directory with its own tokenizer and chat template, trained on each of TRL's
dataset shapes through the CLI's path, exported as a Hugging Face directory that transformers loads."""

import json
import os

import jax
import numpy as np
import pytest

from hf_fixtures import CHAT_TEMPLATE, hf_logits, tiny_bpe_tokenizer, tiny_hf_model
from helpers import run_algorithm
from jaxpref.configs_base import load_config_file

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
Q = ["how do I bake bread?", "what is a fox?", "hello there", "how are you today?"] * 2
GOOD = ["Mix flour, water, salt and yeast, then bake it.", "The quick brown fox jumps.", "hello world",
        "I am well, thank you."] * 2
BAD = ["No.", "A dog.", "bye", "Why?"] * 2

SHAPES = {
    "explicit": [{"prompt": f"Human: {q} Assistant:", "chosen": f" {g}", "rejected": f" {b}"}
                 for q, g, b in zip(Q, GOOD, BAD)],
    "implicit": [{"chosen": f"Human: {q} Assistant: {g}", "rejected": f"Human: {q} Assistant: {b}"}
                 for q, g, b in zip(Q, GOOD, BAD)],
    "conversational": [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": g}],
                        "rejected": [{"role": "assistant", "content": b}]} for q, g, b in zip(Q, GOOD, BAD)],
    "implicit_conversational": [
        {"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": g}],
         "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": b}]} for q, g, b in zip(Q, GOOD, BAD)],
    "string_prompt_messages": [{"prompt": q, "chosen": [{"role": "assistant", "content": g}],
                                "rejected": [{"role": "assistant", "content": b}]} for q, g, b in zip(Q, GOOD, BAD)],
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("my_model")
    tiny_hf_model("llama2", vocab_size=320).save_pretrained(d)
    tiny_bpe_tokenizer(d)
    return str(d)


def _cfg(model_dir, data_path, export: bool):
    cfg = load_config_file(os.path.join(CONFIGS, "dpo_tiny.py"))
    cfg.model.preset, cfg.model.hf_dir, cfg.model.overrides = "", model_dir, {}
    cfg.tokenizer.path = ""  # the model's own
    cfg.data.train_path, cfg.data.skip_invalid, cfg.data.max_rows = data_path, False, None
    cfg.data.eval_fraction = 0.0
    cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.buckets = 64, 32, (64,)
    cfg.train.num_steps, cfg.train.save_every, cfg.train.pairs_per_batch, cfg.train.warmup_steps = 1, 0, 8, 0
    cfg.mesh.num_devices = 1
    cfg.export.hf = export
    return cfg


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_trl_shape_trains_with_the_models_own_tokenizer(shape, model_dir, tmp_path):
    path = tmp_path / f"{shape}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in SHAPES[shape]))
    export = shape == "conversational"
    result, params = run_algorithm(_cfg(model_dir, str(path), export), str(tmp_path / "run"))
    assert result["status"] == "done" and result["tokenization"]["rows_kept"] == len(SHAPES[shape])
    if not export:
        return
    import transformers

    out = result["hf_export"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHAT_TEMPLATE and len(tok) == len(transformers.AutoTokenizer.from_pretrained(model_dir))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    from jaxpref import models as M

    ids = np.array([tok("<|user|>hello</s><|assistant|>hello world")["input_ids"]], np.int32)
    mask = np.ones_like(ids)
    model = M.LlamaForCausalLM(M.load_hf_config(model_dir))
    ours = np.asarray(model.apply({"params": jax.device_get(params)}, ids, attention_mask=mask))
    np.testing.assert_allclose(hf_logits(hf, ids, mask), ours, atol=1e-4)
    before = np.asarray(model.apply({"params": M.from_pretrained(model_dir)[1]}, ids, attention_mask=mask))
    assert np.abs(before - ours).max() > 1e-6  # the export holds the trained weights, not the source's


def test_sampled_responses_stop_at_the_next_user_turn(model_dir):
    """ROPO/APO samples are cut where the policy starts writing the user's next turn: HH's "\\n\\nHuman:" for text
    prompts, the chat template's user-turn prefix for conversations."""
    from jaxpref import data as D
    from jaxpref.algorithms import sampling as Sm

    tok = D.load_tokenizer(model_dir)
    hh = "\n\nHuman: hi\n\nAssistant:"
    assert Sm.user_turn_marker(tok, hh) == "\n\nHuman:"
    assert Sm.cut_at(" Sure, here it is.\n\nHuman: thanks", "\n\nHuman:") == " Sure, here it is."
    assert Sm.user_turn_marker(tok, "plain prompt") is None
    marker = Sm.user_turn_marker(tok, [{"role": "user", "content": "hi"}])
    assert marker == "<|user|>"  # from CHAT_TEMPLATE
    assert Sm.cut_at("Fine.</s><|user|>and you?", marker) == "Fine.</s>"
    # a conversational prompt goes through the chat template (BOS once, generation prompt at the end)
    ids = Sm.prompt_ids(tok, [{"role": "user", "content": "hi"}])
    assert tok.decode(ids).endswith("<|assistant|>") and ids.count(tok.bos_id) == 1
