"""Data layer edge cases: damaged files, per-row shapes (TRL's preference shapes), file kinds and splits, the
Hugging Face cache, chat templates and tokenization skips.

References are independent of jaxpref: zlib/gzip for what a truncated file still holds, TRL's own
``extract_prompt``/``maybe_extract_prompt``/``is_conversational``, ``datasets.load_dataset`` and transformers'
``apply_chat_template``, and hand-computed values.
"""

import csv
import glob
import gzip
import json
import logging
import os
import time
import zlib

import numpy as np
import pytest
import transformers

from jaxpref import data as D
from jaxpref.errors import ConfigError, UserError

HINT = "--config.data.skip_invalid=True"


def _rows(n, start=0):
    return [{"prompt": f"Question number {i}?", "chosen": f" answer {i} is good", "rejected": f" answer {i} is bad"}
            for i in range(start, start + n)]


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---- damaged input -----------------------------------------------------------------------------------


def test_truncated_gzip_strict_error_and_skip_keeps_rows_before_the_damage(tmp_path, caplog):
    path = str(tmp_path / "cut.jsonl.gz")
    rows = _rows(300)
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    with open(path, "wb") as f:
        f.write(whole[: len(whole) // 2])
    # Reference: what zlib can still decompress from the cut stream; its complete lines are the good ones.
    partial = zlib.decompressobj(wbits=31).decompress(whole[: len(whole) // 2])
    good = partial.count(b"\n")
    assert 0 < good < 300

    with pytest.raises(D.DataError) as err:
        D.load_preferences(path)
    msg = _one_line(err)
    assert path in msg and f"after line {good} " in msg and "EOFError" in msg and HINT in msg

    with caplog.at_level(logging.WARNING, logger="jaxpref.data.formats"):
        ds = D.load_preferences(path, skip_invalid=True)
    assert [r["id"] for r in ds] == [f"cut:{i}" for i in range(1, good + 1)]
    assert [r["chosen"] for r in ds] == [r["chosen"] for r in rows[:good]]
    assert ds.report.rows_read == good and ds.report.skipped == 0
    assert len(ds.report.damaged) == 1 and f"after line {good} " in ds.report.damaged[0]
    assert "damaged" in ds.report.summary() and "damaged" in caplog.text
    assert json.loads(json.dumps(ds.report.to_dict()))["damaged"] == ds.report.damaged  # for results.json


def test_gzip_that_is_not_gzip_is_one_line(tmp_path):
    path = tmp_path / "plain.jsonl.gz"
    path.write_text(json.dumps(_rows(1)[0]) + "\n")
    with pytest.raises(D.DataError) as err:
        D.load_preferences(str(path))
    assert "before its first line" in _one_line(err) and "BadGzipFile" in str(err.value)


def test_non_utf8_line_costs_only_that_row(tmp_path):
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in _rows(12)]
    cafe = {"prompt": "Caf\u00e9?", "chosen": " s\u00ed", "rejected": " no"}
    lines[2] = json.dumps(cafe, ensure_ascii=False).encode()
    lines[8] = lines[8].replace(b"good", b"g\xff\xfeood")  # line 9: not UTF-8
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    with pytest.raises(D.DataError) as err:
        D.load_preferences(str(path))
    msg = _one_line(err)
    assert msg.startswith(f"{path}, line 9: not valid UTF-8") and HINT in msg

    ds = D.load_preferences(str(path), skip_invalid=True)
    assert [r["id"] for r in ds] == [f"b:{i}" for i in range(1, 13) if i != 9]
    assert ds[2]["prompt"] == "Caf\u00e9?" and ds[2]["chosen"] == " s\u00ed"  # valid UTF-8 is untouched
    assert ds.report.skipped == 1 and ds.report.first_skipped[0].number == 9
    assert ds.report.reasons == {"not valid UTF-8": 1}
    assert json.loads(json.dumps(ds.report.to_dict()))["first_skipped"] == [
        {"source": str(path), "unit": "line", "number": 9, "reason": ds.report.first_skipped[0].reason}]


def test_shape_is_detected_per_row_not_from_the_first(tmp_path):
    """16 rows: the first has no prompt (a plain implicit pair), the other 15 are explicit."""
    first_ok = {"chosen": "What is the capital of France? Paris.", "rejected": "What is the capital of France? Rome."}
    path = str(tmp_path / "mixed.jsonl")
    D.save_jsonl([first_ok] + _rows(15), path)
    ds = D.load_preferences(path)
    assert len(ds) == 16 and ds.report.shapes == {"implicit": 1, "explicit": 15}
    assert "shapes: explicit 15, implicit 1" in ds.report.summary()
    assert (ds[0]["prompt"], ds[0]["chosen"], ds[0]["rejected"]) == (
        "What is the capital of France?", " Paris.", " Rome.")
    assert ds[1]["prompt"] == "Question number 0?"

    # the first row unusable: only it fails, and not with the HH message
    first_bad = {"chosen": "Paris.", "rejected": "Rome."}
    D.save_jsonl([first_bad] + _rows(15), path)
    with pytest.raises(D.DataError) as err:
        D.load_preferences(path)
    msg = _one_line(err)
    assert ", line 1: chosen and rejected share no prompt" in msg and "Assistant" not in msg
    ds = D.load_preferences(path, skip_invalid=True)
    assert len(ds) == 15 and ds.report.skipped == 1
    assert "shapes: explicit 15, implicit 1" in ds.report.summary() and "share no prompt" in ds.report.summary()


def test_strict_message_names_the_cli_key(tmp_path):
    path = str(tmp_path / "x.jsonl")
    D.save_jsonl([{"prompt": "p", "chosen": " a"}], path)
    with pytest.raises(D.DataError) as err:
        D.load_preferences(path)
    msg = _one_line(err)
    assert HINT in msg and "pass skip_invalid" not in msg
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)


# ---- tokenization: identical after truncation, report ------------------------------------------------


def test_identical_after_truncation_is_an_error_or_a_counted_skip():
    tok = D.load_tokenizer("int:64")
    same_start = {"id": "long", "prompt": "5 6 7", "chosen": " 10 11 12 13 20", "rejected": " 10 11 12 13 21"}
    fine = {"id": "ok", "prompt": "5 6", "chosen": " 30", "rejected": " 31"}
    rows = D.PreferenceDataset([same_start, fine])
    # BOS + 3 prompt tokens leave 8 - 4 = 4 response tokens: [10, 11, 12, 13] for both
    opts = D.TokenizeOptions(max_length=8, max_prompt_length=None)
    with pytest.raises(D.DataError) as err:
        D.tokenize_dataset(rows, tok, opts, progress=False)
    msg = _one_line(err)
    assert msg.startswith("row long: chosen and rejected are identical after truncation to 8 tokens")
    assert "raise max_length" in msg and HINT in msg

    pairs = D.tokenize_dataset(rows, tok, opts, skip_invalid=True, progress=False)
    assert [p.id for p in pairs] == ["ok"] and isinstance(pairs, list)
    assert pairs.report.reasons == {"chosen and rejected are identical after truncation to 8 tokens": 1}
    assert pairs.report.skipped == 1 and pairs.report.rows_in == 2 and pairs.report.rows_kept == 1
    json.dumps(pairs.report.to_dict())  # goes into results.json as is

    # one more token of room: the 5th response token differs, so the pair is kept (its EOS cut)
    pairs = D.tokenize_dataset(rows, tok, D.TokenizeOptions(max_length=9, max_prompt_length=None), progress=False)
    assert pairs[0].chosen_ids.tolist() == [10, 11, 12, 13, 20]
    assert pairs[0].rejected_ids.tolist() == [10, 11, 12, 13, 21]
    assert pairs.report.skipped == 0 and pairs.report.responses_truncated == 1 and pairs.report.prompts_truncated == 0


def test_tokenize_report_counts_reasons_without_row_numbers():
    tok = D.load_tokenizer("int:64")
    rows = D.PreferenceDataset([
        {"id": "a", "prompt": " ".join(["5"] * 9), "chosen": " 1", "rejected": " 2"},  # 10 prompt tokens
        {"id": "b", "prompt": " ".join(["5"] * 11), "chosen": " 1", "rejected": " 2"},  # 12
        {"id": "c", "prompt": "5", "chosen": " 8", "rejected": " 9"},
    ])
    pairs = D.tokenize_dataset(rows, tok, D.TokenizeOptions(max_length=10, max_prompt_length=None),
                               skip_invalid=True, progress=False)
    assert [p.id for p in pairs] == ["c"]
    assert pairs.report.reasons == {"prompt leaves no room for a response within max_length 10": 2}
    assert pairs.report.first_skipped == [
        ("a", "prompt of 10 tokens leaves no room for a response within max_length 10"),
        ("b", "prompt of 12 tokens leaves no room for a response within max_length 10")]


# ---- chat templates ----------------------------------------------------------------------------------

# Roles must alternate user/assistant starting with user (as Mistral's and Llama 2's templates demand).
TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def tiny_hf_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE trained on a few sentences, saved as a HF tokenizer directory without a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Hello there, how can I help you today?", "Go away.", "user assistant system"] * 20,
                            trainer)
    d = tmp_path_factory.mktemp("tinytok")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                         pad_token="<pad>").save_pretrained(str(d))
    return str(d)


def _conv(user, answer):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_chat_template_override_string_or_file_equals_transformers(tiny_hf_tokenizer_dir, tmp_path):
    row = {"id": "r", "prompt": [{"role": "user", "content": "Hello there"}],
           "chosen": [{"role": "assistant", "content": "How can I help?"}],
           "rejected": [{"role": "assistant", "content": "Go away."}]}
    opts = D.TokenizeOptions(max_length=None, max_prompt_length=None)
    with pytest.raises(D.DataError, match="no chat template"):  # a tokenizer problem, raised in any mode
        D.tokenize_dataset(D.PreferenceDataset([row]), D.load_tokenizer(tiny_hf_tokenizer_dir), opts,
                           skip_invalid=True, progress=False)

    (tmp_path / "t.jinja").write_text(TEMPLATE)
    by_text = D.tokenize_pair(row, D.load_tokenizer(tiny_hf_tokenizer_dir, chat_template=TEMPLATE), opts)
    by_file = D.tokenize_pair(row, D.load_tokenizer(tiny_hf_tokenizer_dir, chat_template=str(tmp_path / "t.jinja")),
                              opts)
    assert by_text == by_file
    hf = transformers.AutoTokenizer.from_pretrained(tiny_hf_tokenizer_dir)
    hf.chat_template = TEMPLATE
    for resp, key in ((by_text[1], "chosen"), (by_text[2], "rejected")):
        full = hf.apply_chat_template(row["prompt"] + row[key], tokenize=True, return_dict=True)["input_ids"]
        assert by_text[0] == [hf.bos_token_id] + list(full[: len(by_text[0]) - 1])  # BOS added once
        assert by_text[0][1:] + resp == list(full)  # the template's eos ends the response; no second EOS

    with pytest.raises(ConfigError, match="not a valid Jinja template"):
        D.load_tokenizer(tiny_hf_tokenizer_dir, chat_template="{% for m in messages %}{{ m }")
    with pytest.raises(ConfigError, match="neither an existing file nor a Jinja template"):
        D.load_tokenizer(tiny_hf_tokenizer_dir, chat_template=str(tmp_path / "missing.jinja"))
    with pytest.raises(ConfigError, match="applies to Hugging Face tokenizers"):
        D.load_tokenizer("int:64", chat_template=TEMPLATE)


def test_chat_template_rejecting_a_row_is_an_error_or_a_counted_skip(tiny_hf_tokenizer_dir, tmp_path):
    good = {"chosen": _conv("Hello there", "How can I help?"), "rejected": _conv("Hello there", "Go away.")}
    twice = [{"role": "user", "content": "Hello"}, {"role": "user", "content": "there"}]
    bad = {"chosen": twice + [{"role": "assistant", "content": "Hi"}],
           "rejected": twice + [{"role": "assistant", "content": "Go away."}]}
    path = str(tmp_path / "conv.jsonl")
    D.save_jsonl([good, bad, good | {"id": "third"}], path)
    rows = D.load_preferences(path)  # the rows themselves are well-formed
    tok = D.load_tokenizer(tiny_hf_tokenizer_dir, chat_template=TEMPLATE)
    opts = D.TokenizeOptions(max_length=None, max_prompt_length=None)
    with pytest.raises(D.DataError) as err:
        D.tokenize_dataset(rows, tok, opts, progress=False)
    msg = _one_line(err)
    assert msg.startswith("row conv:2: the chat template rejects the conversation")
    assert "Conversation roles must alternate user/assistant/user/assistant/..." in msg and HINT in msg

    pairs = D.tokenize_dataset(rows, tok, opts, skip_invalid=True, progress=False)
    assert [p.id for p in pairs] == ["conv:1", "third"] and pairs.report.skipped == 1
    (reason, count), = pairs.report.reasons.items()
    assert count == 1 and "Conversation roles must alternate" in reason


# ---- row shapes against TRL ----------------------------------------------------------------------------


def _load_one(tmp_path, record, **kw):
    path = str(tmp_path / "one.jsonl")
    D.save_jsonl([record], path)
    ds = D.load_preferences(path, **kw)
    return ds[0], ds.report


def test_shapes_agree_with_trl_where_trl_splits_at_a_word(tmp_path):
    from trl.data_utils import extract_prompt, is_conversational, maybe_extract_prompt

    sky = _conv("What color is the sky?", "It is blue.")
    sky_r = _conv("What color is the sky?", "It is green.")
    cases = {
        "explicit": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        "implicit": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        "conversational": {"prompt": sky[:1], "chosen": sky[1:], "rejected": sky_r[1:]},
        "implicit conversational": {"chosen": sky, "rejected": sky_r},
        # ultrafeedback_binarized: a string prompt and full conversations
        "string-prompt conversational": {"prompt": "What color is the sky?", "chosen": sky, "rejected": sky_r},
    }
    for shape, record in cases.items():
        row, report = _load_one(tmp_path, record)
        assert report.shapes == {shape: 1}
        assert is_conversational({"chosen": record["chosen"]}) == isinstance(row["chosen"], list)
        trl_row = maybe_extract_prompt(dict(record))
        assert (row["prompt"], row["chosen"], row["rejected"]) == (
            trl_row["prompt"], trl_row["chosen"], trl_row["rejected"]), shape
    assert extract_prompt(cases["implicit"])["prompt"] == "The sky is"


@pytest.mark.parametrize("chosen, rejected, ours, trls", [
    # the texts first differ inside a word: TRL cuts the word
    ("The cat sat down.", "The cat sits down.", ("The cat", " sat down.", " sits down."),
     ("The cat s", "at down.", "its down.")),
    # the responses begin alike: TRL cuts into them, the turn label keeps them whole
    ("Q: Is it safe?\nA: I think so.", "Q: Is it safe?\nA: I do not know.",
     ("Q: Is it safe?\nA:", " I think so.", " I do not know."),
     ("Q: Is it safe?\nA: I", " think so.", " do not know.")),
    # chat-rendered text: cut after the assistant header
    ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nI like it", "<|im_start|>user\nHi<|im_end|>\n"
     "<|im_start|>assistant\nI hate it", ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "I like it",
                                          "I hate it"), None),
    # punctuation is a boundary: no word is split
    ("2+2=4", "2+2=5", ("2+2=", "4", "5"), ("2+2=", "4", "5")),
])
def test_implicit_prompt_never_cuts_a_word_unlike_trl(tmp_path, chosen, rejected, ours, trls):
    from trl.data_utils import extract_prompt

    row, report = _load_one(tmp_path, {"chosen": chosen, "rejected": rejected})
    assert report.shapes == {"implicit": 1}
    assert (row["prompt"], row["chosen"], row["rejected"]) == ours
    got = extract_prompt({"chosen": chosen, "rejected": rejected})
    if trls is not None:
        assert (got["prompt"], got["chosen"], got["rejected"]) == trls


def test_string_prompt_with_assistant_only_lists_keeps_the_prompt(tmp_path):
    """TRL's maybe_extract_prompt finds no shared message and drops the string prompt; we make it the user turn."""
    from trl.data_utils import maybe_extract_prompt

    record = {"prompt": "Capital of France?", "chosen": [{"role": "assistant", "content": "Paris."}],
              "rejected": [{"role": "assistant", "content": "Rome."}]}
    row, report = _load_one(tmp_path, record)
    assert report.shapes == {"string-prompt conversational": 1}
    assert row["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    assert row["chosen"] == record["chosen"] and row["rejected"] == record["rejected"]
    assert maybe_extract_prompt(dict(record))["prompt"] == []

    # a shared system turn before the user turn stays in the prompt
    system = {"role": "system", "content": "Be brief."}
    full = {"prompt": "Capital of France?", "chosen": [system] + _conv("Capital of France?", "Paris."),
            "rejected": [system] + _conv("Capital of France?", "Rome.")}
    row, _ = _load_one(tmp_path, full)
    assert row["prompt"] == [system, {"role": "user", "content": "Capital of France?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Paris."}]


def test_explicit_conversational_full_conversations_are_stripped(tmp_path):
    prompt = [{"role": "user", "content": "Hi"}]
    row, _ = _load_one(tmp_path, {"prompt": prompt, "chosen": _conv("Hi", "Hello!"), "rejected": _conv("Hi", "Bye.")})
    assert row["prompt"] == prompt and row["chosen"] == [{"role": "assistant", "content": "Hello!"}]


def test_forced_format_still_names_the_wrong_field(tmp_path):
    path = str(tmp_path / "f.jsonl")
    D.save_jsonl([{"chosen": "The sky is blue.", "rejected": "The sky is green."}], path)
    with pytest.raises(D.DataError, match="line 1: missing field 'prompt'"):
        D.load_preferences(path, format="explicit")
    with pytest.raises(D.DataError, match="line 1: field 'chosen' must be a non-empty list"):
        D.load_preferences(path, format="conversational")
    assert D.load_preferences(path, format="implicit")[0]["prompt"] == "The sky is"


# ---- files through datasets, splits, the HF cache ---------------------------------------------------


def test_json_array_and_json_lines(tmp_path):
    import datasets

    rows = _rows(3)
    arr = tmp_path / "arr.json"
    arr.write_text("[\n" + json.dumps(rows[0]) + ",\n\n" + json.dumps(rows[1], indent=1) + ",\n" + json.dumps(rows[2])
                   + "\n]\n")
    # element starts: line 2, line 4 (after a blank line), line 4 + 5 = 9 (the indented object has 5 lines)
    ds = D.load_preferences(str(arr))
    assert [r["id"] for r in ds] == ["arr:1", "arr:2", "arr:3"]  # by element: unique even on one line
    ref = datasets.load_dataset("json", data_files=str(arr), split="train")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in ds] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in ref]
    lines = tmp_path / "lines.json"
    D.save_jsonl(rows, str(lines))
    assert [r["prompt"] for r in D.load_preferences(str(lines))] == [r["prompt"] for r in rows]

    with pytest.raises(D.DataError, match=", element 3 \\(line 9\\): empty rejected response"):
        arr.write_text(arr.read_text().replace(rows[2]["rejected"], " "))
        D.load_preferences(str(arr))
    # a bad element costs one row
    arr.write_text(json.dumps([rows[0], {"prompt": "p", "chosen": 3, "rejected": " x"}, rows[1]]))
    ds = D.load_preferences(str(arr), skip_invalid=True)
    assert [r["id"] for r in ds] == ["arr:1", "arr:3"]
    assert ds.report.reasons == {"field 'chosen' is int, expected a string": 1}
    # a malformed JSON line costs one row here; datasets rejects the whole file (why JSON is read by jaxpref)
    lines.write_text(json.dumps(rows[0]) + "\n{not json\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(Exception):
        datasets.load_dataset("json", data_files=str(lines), split="train")
    ds = D.load_preferences(str(lines), skip_invalid=True)
    assert [r["id"] for r in ds] == ["lines:1", "lines:3"] and ds.report.reasons == {"not valid JSON": 1}

    arr.write_text(json.dumps(rows)[:-40])  # cut short
    with pytest.raises(D.DataError, match="is not a valid JSON array after element 2 \\(line 1\\)"):
        D.load_preferences(str(arr))


def test_csv_reads_every_cell_as_text(tmp_path):
    path = tmp_path / "a.csv"
    rows = [{"prompt": "Q1?", "chosen": " 42", "rejected": " bad, \"quoted\"\nand multiline", "score_chosen": "8",
             "score_rejected": "3.5"},
            {"prompt": "Q2?", "chosen": " yes", "rejected": " no", "score_chosen": "", "score_rejected": ""},
            {"prompt": "Q3?", "chosen": " yes", "rejected": "", "score_chosen": "1", "score_rejected": "2"}]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = D.load_preferences(str(path), skip_invalid=True)
    assert ds.rows == [
        {"id": "a:1", "prompt": "Q1?", "chosen": " 42", "rejected": " bad, \"quoted\"\nand multiline",
         "score_chosen": 8.0, "score_rejected": 3.5},
        {"id": "a:2", "prompt": "Q2?", "chosen": " yes", "rejected": " no"}]
    assert ds.report.first_skipped == [(str(path), "row", 3, "empty rejected response")]


def test_dataset_dict_splits(tmp_path):
    import datasets

    rows = _rows(5)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]),
                               "test": datasets.Dataset.from_list(rows[3:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    D.save_jsonl(rows, str(tmp_path / "f.jsonl"))

    d = str(tmp_path / "dd")
    assert D.available_splits(d) == ["train", "test"] and D.has_test_split(d)
    assert not D.has_test_split(str(tmp_path / "single")) and not D.has_test_split(str(tmp_path / "f.jsonl"))
    train, test = D.load_preferences(d), D.load_preferences(d, split="test")
    assert [r["prompt"] for r in train] == [r["prompt"] for r in rows[:3]]
    assert [r["prompt"] for r in test] == [r["prompt"] for r in rows[3:]]
    assert [r["id"] for r in test] == ["dd[test]:1", "dd[test]:2"]  # distinct from the train ids
    assert D.load_preferences(d + ":test").rows == test.rows
    with pytest.raises(D.DataError, match="no split 'validation'; its splits are \\['test', 'train'\\]"):
        D.load_preferences(d, split="validation")
    with pytest.raises(D.DataError, match="a single file has no split 'test'"):
        D.load_preferences(str(tmp_path / "f.jsonl"), split="test")


@pytest.fixture
def hf_caches(tmp_path, monkeypatch):
    """Empty datasets and hub caches in tmp_path, offline mode."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    return tmp_path


def _prepare_cached_hub_dataset(cache: str, repo_id: str, splits: dict[str, list[dict]], tmp_path) -> None:
    """Write what ``datasets.load_dataset(repo_id)`` leaves in its cache after a download:
    ``<cache>/<org>___<name>/default/0.0.0/<commit>/{dataset_info.json, <name>-<split>.arrow}``."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    org, name = repo_id.split("/")
    files = {}
    for split, rows in splits.items():
        files[split] = [str(tmp_path / f"{split}.parquet")]
        datasets.Dataset.from_list(rows).to_parquet(files[split][0])
    builder = Parquet(cache_dir=cache, dataset_name=f"{org}___{name}", hash="0" * 40,
                      data_files=DataFilesDict.from_local_or_remote(files, base_path=str(tmp_path)))
    builder.download_and_prepare()
    config_dir = glob.glob(os.path.join(cache, f"{org}___{name}", "default-*"))[0]
    os.rename(config_dir, os.path.join(cache, f"{org}___{name}", "default"))
    final = os.path.join(cache, f"{org}___{name}", "default", "0.0.0", "0" * 40)
    for f in glob.glob(os.path.join(final, "*.arrow")):
        os.rename(f, f.replace(f"{org}___{name}-", f"{name}-"))
    info_path = os.path.join(final, "dataset_info.json")
    info = json.load(open(info_path))
    json.dump(info | {"config_name": "default"}, open(info_path, "w"))


def test_hub_name_from_the_datasets_cache_offline(hf_caches):
    import datasets

    rows = _rows(4)
    _prepare_cached_hub_dataset(datasets.config.HF_DATASETS_CACHE, "someorg/prefs",
                                {"train": rows[:3], "test": rows[3:]}, hf_caches)
    # the reference: datasets itself, offline, finds the same rows in this cache
    ref = datasets.load_dataset("someorg/prefs", split="test")
    assert ref.num_rows == 1
    assert D.available_splits("someorg/prefs") == ["train", "test"] and D.has_test_split("someorg/prefs")
    test = D.load_preferences("someorg/prefs", split="test")
    assert [(r["prompt"], r["chosen"]) for r in test] == [(r["prompt"], r["chosen"]) for r in ref]
    assert [r["prompt"] for r in D.load_preferences("someorg/prefs")] == [r["prompt"] for r in rows[:3]]
    assert D.load_preferences("someorg/prefs:test").rows == test.rows


def test_hub_name_from_a_hub_snapshot_offline(hf_caches):
    import huggingface_hub.constants

    repo = os.path.join(huggingface_hub.constants.HF_HUB_CACHE, "datasets--someorg--snap")
    commit = "a" * 40
    os.makedirs(os.path.join(repo, "snapshots", commit, "data"))
    os.makedirs(os.path.join(repo, "refs"))
    open(os.path.join(repo, "refs", "main"), "w").write(commit)
    for split, rows in (("train", _rows(2)), ("test", _rows(1, start=7))):
        D.save_jsonl(rows, os.path.join(repo, "snapshots", commit, "data", f"{split}.jsonl"))
    assert D.has_test_split("someorg/snap")
    assert [r["prompt"] for r in D.load_preferences("someorg/snap", split="test")] == ["Question number 7?"]


def test_hub_name_not_cached_is_a_quick_one_line_error(hf_caches):
    start = time.time()
    with pytest.raises(D.DataError) as err:
        D.load_preferences("no-such-org/no-such-dataset-xyz")
    msg = _one_line(err)
    assert "neither a local file nor in the datasets cache" in msg and "save_to_disk" in msg
    assert time.time() - start < 10  # no network retries
    with pytest.raises(D.DataError, match="no such file"):
        D.load_preferences("/nonexistent/file.jsonl")


def test_corrupt_parquet_is_one_line(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(D.DataError) as err:
        D.load_preferences(str(path))
    assert str(path) in _one_line(err) and HINT in str(err.value)


def test_tokenized_pairs_feed_the_batcher():
    tok = D.load_tokenizer("int:64")
    rows = D.PreferenceDataset([{"id": str(i), "prompt": "5 6", "chosen": f" {10 + i}", "rejected": " 3"}
                                for i in range(4)])
    pairs = D.tokenize_dataset(rows, tok, D.TokenizeOptions(max_length=16, max_prompt_length=8), progress=False)
    batch = D.PairBatcher(pairs, D.BatchOptions(pairs_per_batch=4, buckets=(8,), shuffle=False, sort_window=0),
                          pad_id=0).make_batch([0, 1, 2, 3])
    np.testing.assert_array_equal(batch["input_ids"][0], [1, 5, 6, 10, 2, 0, 0, 0])
