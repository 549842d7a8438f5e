"""Data pipeline: formats, HH sample, tokenization vs the HF tokenizer, batches, packing, resume, noise, bad input."""

import gzip
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from jaxpref import data as D
from jaxpref import logprobs as LP
from jaxpref import models


def _raw_hh():
    with gzip.open(D.SHIPPED_HH, "rt") as f:
        return [json.loads(line) for line in f]


# ---- the shipped HH sample ---------------------------------------------------------------------------


def test_hh_sample_every_row_loaded_or_reported():
    raw = _raw_hh()
    ds = D.load_preferences(D.SHIPPED_HH, skip_invalid=True)
    assert ds.report.rows_read == len(raw) == 2312
    assert ds.report.rows_kept + ds.report.skipped == len(raw)
    assert len(ds) == ds.report.rows_kept and ds.report.skipped > 0
    assert os.path.exists(os.path.join(os.path.dirname(D.SHIPPED_HH), "LICENSE.hh-rlhf"))

    # hand checks of skipped rows, against the raw text
    reasons = {sk.number: sk.reason for sk in ds.report.first_skipped}
    assert {sk.unit for sk in ds.report.first_skipped} == {"line"}
    assert ds.report.shapes == {"hh": 2312}
    line = next(n for n, r in reasons.items() if r == "empty chosen response")
    chosen = raw[line - 1]["chosen"]
    assert not chosen[chosen.rfind("\n\nAssistant:") + len("\n\nAssistant:"):].strip()
    line = next(n for n, r in reasons.items() if "different prompts" in r)
    c, r = raw[line - 1]["chosen"], raw[line - 1]["rejected"]
    assert c[: c.rfind("\n\nAssistant:")] != r[: r.rfind("\n\nAssistant:")]

    # hand checks of kept rows
    for row in (ds[0], ds[100], ds[-1]):
        n = int(row["id"].split(":")[1])
        full_c, full_r = raw[n - 1]["chosen"], raw[n - 1]["rejected"]
        assert row["prompt"].endswith("\n\nAssistant:") and row["prompt"].startswith("\n\nHuman:")
        assert row["prompt"] + row["chosen"] == full_c and row["prompt"] + row["rejected"] == full_r
        assert "\n\nAssistant:" not in row["chosen"]


def test_hh_split_does_not_cut_into_shared_response_words():
    """Both responses start with 'I' - TRL's character LCP would eat it; the HH convention does not."""
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: I think so.", "rejected": "\n\nHuman: hi\n\nAssistant: I do not."}]
    path = "/tmp/jaxpref_hh_lcp.jsonl"
    D.save_jsonl(rows, path)
    row = D.load_preferences(path)[0]
    assert row["prompt"] == "\n\nHuman: hi\n\nAssistant:"
    assert row["chosen"] == " I think so." and row["rejected"] == " I do not."


# ---- formats -----------------------------------------------------------------------------------------


EXPLICIT = [
    {"prompt": "Q1?", "chosen": " good", "rejected": " bad", "score_chosen": 8, "score_rejected": 3.5},
    {"prompt": "Q2?", "chosen": " yes", "rejected": " no", "score_chosen": 9, "score_rejected": 1},
]


def test_all_file_formats_load_the_same(tmp_path):
    import datasets

    D.save_jsonl(EXPLICIT, str(tmp_path / "a.jsonl"))
    D.save_jsonl(EXPLICIT, str(tmp_path / "a.jsonl.gz"))
    ds = datasets.Dataset.from_list(EXPLICIT)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    arrow = next(f for f in os.listdir(tmp_path / "disk") if f.endswith(".arrow"))
    shutil.copy(tmp_path / "disk" / arrow, tmp_path / "a.arrow")
    loaded = [D.load_preferences(str(tmp_path / name)) for name in ("a.jsonl", "a.jsonl.gz", "a.parquet", "a.arrow", "disk")]
    for ds_ in loaded:
        assert [(r["prompt"], r["chosen"], r["rejected"], r["score_chosen"], r["score_rejected"]) for r in ds_] == [
            ("Q1?", " good", " bad", 8.0, 3.5), ("Q2?", " yes", " no", 9.0, 1.0)]
    assert loaded[0][0]["id"] == "a:1"


def test_conversational_rows_and_chat_template(tmp_path):
    from hf_fixtures import smollm2_hf_dir

    rows = [{
        "chosen": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
        "rejected": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Go away."}],
    }]
    D.save_jsonl(rows, str(tmp_path / "c.jsonl"))
    ds = D.load_preferences(str(tmp_path / "c.jsonl"))
    assert ds[0]["prompt"] == [{"role": "user", "content": "Hi there"}]
    tok = D.load_tokenizer(smollm2_hf_dir())
    p, c, r = D.tokenize_pair(ds[0], tok, D.TokenizeOptions(max_length=None, max_prompt_length=None))
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir())
    full = hf.apply_chat_template(rows[0]["chosen"], tokenize=True, return_dict=True)["input_ids"]
    assert p + c[: len(full) - len(p)] == list(full)
    assert c.count(tok.eos_id) == 1  # the template's end-of-turn is the EOS; no second one added


# ---- tokenization ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mistral_hf_tokenizer(tmp_path_factory):
    """transformers' tokenizer on the real Mistral SentencePiece model (loaded from a directory, not vocab_file=)."""
    d = tmp_path_factory.mktemp("mistral_tok")
    shutil.copy(D.mistral_tokenizer_path(), d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True}))
    return transformers.AutoTokenizer.from_pretrained(str(d))


def test_token_ids_equal_hf_tokenizer_on_hh(mistral_hf_tokenizer):
    """Our prompt/response split + BOS/EOS against transformers tokenizing the whole text (all HH rows)."""
    tok = D.load_tokenizer("mistral")
    assert tok.vocab_size == 32000 and tok.bos_id == 1 and tok.eos_id == 2
    ds = D.load_preferences(D.SHIPPED_HH, skip_invalid=True)
    opts = D.TokenizeOptions(max_length=None, max_prompt_length=None)
    for row in ds:
        p, c, r = D.tokenize_pair(row, tok, opts)
        assert p[0] == 1 and p.count(1) == 1 and c[-1] == 2 and r[-1] == 2
        for resp, text in ((c, row["chosen"]), (r, row["rejected"])):
            hf_ids = mistral_hf_tokenizer(row["prompt"] + text)["input_ids"]  # BOS added by HF
            assert p + resp[:-1] == hf_ids, row["id"]


def test_raw_sentencepiece_differs_from_hf_only_on_space_runs(mistral_hf_tokenizer):
    """The documented caveat of SentencePieceTokenizer: every mismatch with HF involves a run of spaces."""
    spm = D.load_tokenizer(D.mistral_tokenizer_path())
    assert isinstance(spm, D.SentencePieceTokenizer)
    mismatches = 0
    for row in D.load_preferences(D.SHIPPED_HH, skip_invalid=True)[:300]:
        text = row["prompt"] + row["chosen"]
        if [1] + spm.encode(text) != mistral_hf_tokenizer(text)["input_ids"]:
            mismatches += 1
            assert "  " in text, text
        elif "  " not in text:
            assert spm.decode(spm.encode(text)) == text
    assert mismatches > 0  # the caveat is real on this data


def test_truncation_modes():
    tok = D.load_tokenizer("mistral")
    row = {"id": "x", "prompt": " ".join(f"w{i}" for i in range(40)), "chosen": " a b c d e f g h i j k l", "rejected": " z"}
    full_p, full_c, _ = D.tokenize_pair(row, tok, D.TokenizeOptions(max_length=None, max_prompt_length=None))
    p, c, r = D.tokenize_pair(row, tok, D.TokenizeOptions(max_length=30, max_prompt_length=20))
    assert p == [1] + full_p[-19:]  # keep_end keeps BOS then the prompt's end
    assert c == full_c[: 30 - 20] and c[-1] != 2  # keep_start on the response: its end (and EOS) is cut
    p2, _, _ = D.tokenize_pair(row, tok, D.TokenizeOptions(max_length=30, max_prompt_length=20,
                                                            prompt_truncation="keep_start"))
    assert p2 == full_p[:20]
    with pytest.raises(D.DataError, match="no room for a response"):
        D.tokenize_dataset(D.PreferenceDataset([row]), tok, D.TokenizeOptions(max_length=20, max_prompt_length=None),
                           progress=False)
    assert D.tokenize_dataset(D.PreferenceDataset([row, {**row, "id": "y", "prompt": "short"}]), tok,
                              D.TokenizeOptions(max_length=20, max_prompt_length=None), skip_invalid=True,
                              progress=False)[0].id == "y"


# ---- batches -----------------------------------------------------------------------------------------


def _pair(i, prompt, chosen, rejected):
    return D.TokenizedPair(i, f"p{i}", np.array(prompt, np.int32), np.array(chosen, np.int32),
                           np.array(rejected, np.int32))


HAND = [_pair(0, [1, 5, 6], [7, 2], [8, 9, 2]), _pair(1, [1, 4], [3, 3, 3, 2], [2])]


def test_unpacked_batch_exact():
    b = D.PairBatcher(HAND, D.BatchOptions(pairs_per_batch=2, buckets=(4, 8), shuffle=False, sort_window=0),
                      pad_id=0)
    batch = b.make_batch([0, 1])
    assert batch["input_ids"].shape == (4, 8)  # longest = 2 + 4 = 6 -> bucket 8
    np.testing.assert_array_equal(batch["input_ids"], [
        [1, 5, 6, 7, 2, 0, 0, 0], [1, 5, 6, 8, 9, 2, 0, 0], [1, 4, 3, 3, 3, 2, 0, 0], [1, 4, 2, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["loss_mask"], [
        [0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"][3], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["positions"][2], [0, 1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(batch["sequence_ids"][:, 0], [0, 1, 2, 3])
    assert np.all(batch["sequence_ids"][0, 5:] == 4)
    np.testing.assert_array_equal(batch["chosen_lengths"], [2, 4])
    np.testing.assert_array_equal(batch["rejected_lengths"], [3, 1])
    np.testing.assert_array_equal(batch["pair_weight"], [1, 1])
    # a partial batch is padded with a zero-weight pair
    partial = b.make_batch([1])
    np.testing.assert_array_equal(partial["pair_weight"], [1, 0])
    np.testing.assert_array_equal(partial["pair_index"], [1, -1])
    assert partial["attention_mask"][2:].sum() == 0


def test_response_positions_pooled_per_row_group_hand_computed():
    """``score_index[g]``: flat next-token positions ``r * (L - 1) + t`` of the response targets of group ``g``'s
    rows; one group per shard, so two groups here split the two pairs; the width is the score bucket."""
    opts = dict(pairs_per_batch=2, buckets=(4, 8), shuffle=False, sort_window=0)
    one = D.PairBatcher(HAND, D.BatchOptions(**opts), pad_id=0).make_batch([0, 1])
    # loss_mask[:, 1:] targets (L - 1 = 7 per row): row 0 t=2,3; row 1 t=2,3,4; row 2 t=1..4; row 3 t=1
    flat = [2, 3, 7 + 2, 7 + 3, 7 + 4, 14 + 1, 14 + 2, 14 + 3, 14 + 4, 21 + 1]
    assert one["score_index"].shape == (1, 28)  # 10 response tokens -> bucket 64, capped at 4 rows x 7
    np.testing.assert_array_equal(one["score_index"][0, :10], flat)
    np.testing.assert_array_equal(one["score_mask"][0], [1] * 10 + [0] * 18)
    two = D.PairBatcher(HAND, D.BatchOptions(score_groups=2, **opts), pad_id=0).make_batch([0, 1])
    assert two["score_index"].shape == (2, 14)  # each group: 2 rows x 7
    np.testing.assert_array_equal(two["score_index"][0, :5], [2, 3, 9, 10, 11])
    np.testing.assert_array_equal(two["score_index"][1, :5], [1, 2, 3, 4, 8])
    np.testing.assert_array_equal(two["score_mask"].sum(1), [5, 5])
    assert [D.score_width_bucket(n, 10**6) for n in (1, 64, 65, 97, 129, 193, 257, 385)] == [
        64, 64, 96, 128, 192, 256, 384, 512]
    assert D.score_width_bucket(300, 200) == 200


def test_packed_batch_keeps_sequences_apart_and_matches_unpacked_logprobs():
    rng = np.random.default_rng(0)
    pairs = [_pair(i, [1] + list(rng.integers(3, 500, rng.integers(2, 9))), list(rng.integers(3, 500, rng.integers(1, 6))) + [2],
                   list(rng.integers(3, 500, rng.integers(1, 6))) + [2]) for i in range(6)]
    opts = dict(pairs_per_batch=6, shuffle=False, sort_window=0)
    packed = D.PairBatcher(pairs, D.BatchOptions(buckets=(40,), packing=True, rows_per_batch=4, **opts)).make_batch(
        list(range(6)))
    plain = D.PairBatcher(pairs, D.BatchOptions(buckets=(16,), **opts)).make_batch(list(range(6)))
    assert packed["input_ids"].shape == (4, 40) and plain["input_ids"].shape == (12, 16)
    assert packed["attention_mask"].sum() == plain["attention_mask"].sum()
    # each segment is one sequence, with positions restarting at 0
    for row in range(4):
        for s in set(packed["segment_ids"][row]) - {0}:
            sel = packed["segment_ids"][row] == s
            assert len(set(packed["sequence_ids"][row][sel])) == 1
            np.testing.assert_array_equal(packed["positions"][row][sel], np.arange(sel.sum()))

    cfg = models.preset("tiny_llama")
    model, params = models.LlamaForCausalLM(cfg), models.init_params(cfg, 0)

    def seq_logps(b):
        logits = model.apply({"params": params}, jnp.asarray(b["input_ids"]), attention_mask=jnp.asarray(b["attention_mask"]),
                             positions=jnp.asarray(b["positions"]), segment_ids=jnp.asarray(b["segment_ids"]))
        per_tok = LP.token_logprobs(logits[:, :-1], jnp.asarray(b["input_ids"][:, 1:]))
        return LP.sequence_sums(per_tok, jnp.asarray(b["loss_mask"][:, 1:]), jnp.asarray(b["sequence_ids"][:, 1:]), 6)

    for a, b_ in zip(seq_logps(packed), seq_logps(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=1e-5, atol=1e-4)


def test_hh_buckets_padding_efficiency_and_resume():
    tok = D.load_tokenizer("mistral")
    ds = D.load_preferences(D.SHIPPED_HH, skip_invalid=True)[:400]
    pairs = D.tokenize_dataset(ds, tok, D.TokenizeOptions(max_length=256, max_prompt_length=128), progress=False)
    opts = D.BatchOptions(pairs_per_batch=8, buckets=(64, 128, 192, 256), seed=3)
    batcher = D.PairBatcher(pairs, opts, pad_id=tok.pad_id)
    shapes = {batcher.make_batch(ix)["input_ids"].shape[1] for ix in batcher.epoch_plan(0)}
    assert shapes <= {64, 128, 192, 256}
    sorted_eff = batcher.padding_efficiency()
    unsorted_eff = D.PairBatcher(pairs, D.BatchOptions(pairs_per_batch=8, buckets=(256,), sort_window=0)).padding_efficiency()
    assert sorted_eff > unsorted_eff + 0.1, (sorted_eff, unsorted_eff)

    it = iter(batcher)
    n = batcher.batches_per_epoch
    first = [next(it) for _ in range(n + 3)]  # crosses into epoch 1
    state = batcher.state_dict()
    rest = [next(it) for _ in range(5)]
    resumed = D.PairBatcher(pairs, opts, pad_id=tok.pad_id)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    again = [next(iter(resumed)) for _ in range(1)] + [b for _, b in zip(range(4), iter(resumed))]
    for a, b in zip(rest, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # epochs differ in order, and every pair appears exactly once per epoch
    ep0 = sorted(i for ix in batcher.epoch_plan(0) for i in ix)
    assert ep0 == list(range(len(pairs))) and batcher.epoch_plan(0) != batcher.epoch_plan(1)
    assert first[0]["pair_index"].tolist() != first[n]["pair_index"].tolist()


@pytest.mark.parametrize("packing", [False, True])
def test_host_shards_assemble_the_global_batch(packing):
    rng = np.random.default_rng(1)
    pairs = [_pair(i, [1, 2, 3], list(rng.integers(3, 50, rng.integers(1, 7))), [4, 2]) for i in range(20)]
    opts = D.BatchOptions(pairs_per_batch=8, buckets=(16, 32), packing=packing, rows_per_batch=4, seed=5)
    hosts = [D.PairBatcher(pairs, opts, process_index=h, process_count=2) for h in range(2)]
    assert hosts[0].epoch_plan(0) == hosts[1].epoch_plan(0)
    for ix in hosts[0].epoch_plan(0):
        parts = [h.make_batch(ix) for h in hosts]
        idx = np.concatenate([p["pair_index"] for p in parts])
        assert sorted(i for i in idx if i >= 0) == sorted(ix if not packing else [i for i in ix if i >= 0])
        assert parts[0]["input_ids"].shape == parts[1]["input_ids"].shape
        # sequence ids are global: host 1's first pair is pair P/2
        seqs1 = set(parts[1]["sequence_ids"].ravel()) - {16}
        assert all(s >= 8 for s in seqs1)


# ---- noise and bad input -----------------------------------------------------------------------------


def test_flip_labels_exact():
    ds = D.PreferenceDataset([dict(r, id=str(i)) for i, r in enumerate(EXPLICIT * 10)])
    noisy, flipped = D.flip_labels(ds, 0.3, seed=7)
    assert flipped.sum() == 6
    for a, b, f in zip(ds, noisy, flipped):
        if f:
            assert (b["chosen"], b["rejected"], b["score_chosen"]) == (a["rejected"], a["chosen"], a["score_rejected"])
        else:
            assert b == dict(a, flipped=False)
        assert b["flipped"] == f
    _, again = D.flip_labels(ds, 0.3, seed=7)
    np.testing.assert_array_equal(flipped, again)
    assert all(r.get("flipped") is None for r in ds)  # input untouched


BAD_ROWS = {
    "missing field 'rejected'": {"prompt": "p", "chosen": " a"},
    "empty rejected response": {"prompt": "p", "chosen": " a", "rejected": "   "},
    "chosen and rejected responses are identical": {"prompt": "p", "chosen": " a", "rejected": " a"},
    "field 'chosen' is int, expected a string": {"prompt": "p", "chosen": 3, "rejected": " a"},
    "field 'score_chosen' is 'high', expected a number": {"prompt": "p", "chosen": " a", "rejected": " b",
                                                         "score_chosen": "high"},
}


@pytest.mark.parametrize("reason", list(BAD_ROWS))
def test_bad_rows_error_or_counted_skip(tmp_path, reason):
    good = {"prompt": "p", "chosen": " x", "rejected": " y"}
    path = str(tmp_path / "bad.jsonl")
    D.save_jsonl([good, dict(good, chosen=" x2"), BAD_ROWS[reason], dict(good, chosen=" x3")], path)
    with pytest.raises(D.DataError) as err:
        D.load_preferences(path, format="explicit")
    assert f"{path}, line 3: {reason}" in str(err.value)
    ds = D.load_preferences(path, format="explicit", skip_invalid=True)
    assert len(ds) == 3 and ds.report.skipped == 1 and ds.report.first_skipped == [(path, "line", 3, reason)]
    assert "skipped 1 invalid" in ds.report.summary()


def test_invalid_json_line_and_longer_than_bucket(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"prompt": "p", "chosen": " a", "rejected": " b"}\n{not json\n')
    with pytest.raises(D.DataError, match="line 2: not valid JSON"):
        D.load_preferences(str(path))
    pairs = [_pair(0, [1] * 5, [2] * 3, [3]), _pair(1, [1] * 30, [2] * 3, [3])]
    with pytest.raises(D.DataError, match="row p1: 33 tokens, longer than the largest bucket 16"):
        D.PairBatcher(pairs, D.BatchOptions(pairs_per_batch=1, buckets=(8, 16)))
    b = D.PairBatcher(pairs, D.BatchOptions(pairs_per_batch=1, buckets=(8, 16), skip_invalid=True))
    assert b.skipped_ids == ["p1"] and len(b.pairs) == 1
