"""Every checkpoint read is checked: truncated safetensors, corrupt JSON, missing shards, bad pickles, and
Hub ids resolved from the local Hugging Face cache only."""

import json
import os
import shutil
import struct

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import fake_hub_cache, hf_logits, tiny_bpe_tokenizer, tiny_hf_model
from jaxpref import models
from jaxpref.errors import UserError
from jaxpref.models import convert


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    hf = tiny_hf_model("llama2", seed=5)
    path = tmp_path_factory.mktemp("src")
    hf.save_pretrained(str(path))
    return hf, str(path)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _header(path):
    """The safetensors header, parsed here by hand: ``(data start, {name: (begin, end)})``."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, {k: tuple(v["data_offsets"]) for k, v in header.items()}


def _one_line(e):
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_truncated_safetensors_is_refused_before_reading(hf_dir, tmp_path):
    hf, src = hf_dir
    d = _copy(src, tmp_path / "cut")
    path = os.path.join(d, "model.safetensors")
    full = os.path.getsize(path)
    base, offsets = _header(path)
    cut = base + (full - base) * 6 // 10  # a download that stopped at 60% of the data
    os.truncate(path, cut)
    # the first tensor (in file order) whose bytes run past the end, and the size the header asks for
    first = min((name for name, (b, e) in offsets.items() if base + e > cut), key=lambda n: offsets[n][0])
    need = base + max(e for _, e in offsets.values())
    assert need == full

    with pytest.raises(convert.CheckpointError) as e:
        models.from_pretrained(d)
    msg = _one_line(e)
    assert path in msg and repr(first) in msg and "truncated" in msg
    assert str(need) in msg and str(cut) in msg  # expected vs actual bytes
    assert isinstance(e.value, UserError)
    # up front: not a single tensor is yielded from a truncated file
    with pytest.raises(convert.CheckpointError):
        next(convert._read_safetensors(path))

    # a file cut inside its JSON header
    os.truncate(path, 20)
    with pytest.raises(convert.CheckpointError, match="truncated: its header"):
        models.from_pretrained(d)
    # the intact file loads (the check does not refuse good files) with transformers' logits
    model, params = models.from_pretrained(src)
    ids = np.random.default_rng(0).integers(3, 320, (2, 7))
    mask = np.ones_like(ids)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(ours - hf_logits(hf, ids, mask)).max() <= 1e-4


def test_truncated_last_shard_is_refused_before_any_tensor_is_read(hf_dir, tmp_path):
    hf, src = hf_dir
    model, params = models.from_pretrained(src)
    d = str(tmp_path / "sharded")
    convert.save_hf_checkpoint(params, model.config, d, max_shard_bytes=100_000)
    shards = sorted(set(json.load(open(os.path.join(d, convert.SAFE_INDEX)))["weight_map"].values()))
    last = os.path.join(d, shards[-1])
    os.truncate(last, os.path.getsize(last) - 1)
    tensors = convert.iter_hf_tensors(d)
    with pytest.raises(convert.CheckpointError) as e:
        next(tensors)  # the first shard is intact, yet nothing is yielded
    assert last in _one_line(e) and str(os.path.getsize(last)) in str(e.value)


def test_short_read_is_refused(hf_dir, tmp_path):
    """A file that shrinks after its size was checked (overwritten during the load): the ``readinto`` count."""
    hf, src = hf_dir
    d = _copy(src, tmp_path / "shrinks")
    path = os.path.join(d, "model.safetensors")
    base, offsets = _header(path)
    reader = convert._read_safetensors(path)
    first_name, first = next(reader)  # passes the up-front size check
    assert first_name == min(offsets, key=lambda n: offsets[n][0])
    second = sorted(offsets.values())[1]
    keep = base + second[0] + 10  # 10 bytes of the second tensor remain
    os.truncate(path, keep)
    with pytest.raises(convert.CheckpointError) as e:
        for _ in reader:
            pass
    msg = _one_line(e)
    second_name = next(n for n, o in offsets.items() if o == second)
    assert path in msg and repr(second_name) in msg
    assert f"read 10 of its {second[1] - second[0]} bytes" in msg


def test_corrupt_config_and_index_json(hf_dir, tmp_path):
    hf, src = hf_dir
    d = _copy(src, tmp_path / "badjson")
    cfg_path = os.path.join(d, "config.json")
    text = open(cfg_path).read()
    with open(cfg_path, "w") as f:
        f.write(text[: len(text) // 2])  # cut mid-object
    with pytest.raises(convert.CheckpointError) as e:
        models.from_pretrained(d)
    msg = _one_line(e)
    assert cfg_path in msg and "not valid JSON" in msg and "line" in msg

    # a sharded checkpoint whose index is not JSON, or names a shard that is not there
    model, params = models.from_pretrained(src)
    sharded = str(tmp_path / "sharded")
    convert.save_hf_checkpoint(params, model.config, sharded, max_shard_bytes=100_000)
    index = os.path.join(sharded, convert.SAFE_INDEX)
    shards = sorted(set(json.load(open(index))["weight_map"].values()))
    assert len(shards) >= 3
    os.remove(os.path.join(sharded, shards[1]))
    with pytest.raises(convert.CheckpointError) as e:
        models.from_pretrained(sharded)
    msg = _one_line(e)
    assert index in msg and repr(shards[1]) in msg and "not in" in msg
    with open(index, "w") as f:
        f.write("{\"weight_map\": {")
    with pytest.raises(convert.CheckpointError, match=r"model\.safetensors\.index\.json is not valid JSON"):
        models.from_pretrained(sharded)


def test_truncated_pytorch_bin_is_refused(tmp_path):
    hf = tiny_hf_model("llama2", seed=3)
    torch.save({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(str(tmp_path))
    path = tmp_path / "pytorch_model.bin"
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(convert.CheckpointError) as e:
        models.from_pretrained(str(tmp_path))
    assert str(path) in _one_line(e)


def test_hub_id_from_the_local_cache(hf_dir, tmp_path, monkeypatch):
    hf, src = hf_dir
    files = tmp_path / "files"
    shutil.copytree(src, files)
    tiny_bpe_tokenizer(files)
    cache = tmp_path / "hub"
    snapshot = fake_hub_cache(cache, "TinyOrg/tiny-llama", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert os.path.samefile(models.resolve_model_dir("TinyOrg/tiny-llama"), snapshot)
    model, params = models.from_pretrained("TinyOrg/tiny-llama")
    ids = np.random.default_rng(1).integers(3, 320, (2, 9))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert (np.abs(ours - hf_logits(hf, ids, mask)) * mask[..., None]).max() <= 1e-4
    # the export takes its tokenizer from the cached id too
    out = models.save_pretrained(model, params, str(tmp_path / "out"), source_dir="TinyOrg/tiny-llama")
    assert os.path.exists(os.path.join(out, "tokenizer.json"))

    with pytest.raises(convert.CheckpointError) as e:
        models.from_pretrained("TinyOrg/not-downloaded")
    msg = _one_line(e)
    assert "'TinyOrg/not-downloaded'" in msg and "not in the local Hugging Face cache" in msg
    assert "offline" in msg and "local model directory" in msg and str(cache) in msg
    # a path-like name that does not exist is not looked up as a Hub id
    with pytest.raises(convert.CheckpointError, match="does not exist"):
        models.from_pretrained(str(tmp_path / "no" / "such" / "dir"))
