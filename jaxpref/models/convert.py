"""Hugging Face Llama/Mistral checkpoints <-> jaxpref Flax params, tensor by tensor.

HF -> Flax reads ``config.json`` plus ``model.safetensors``, sharded safetensors
(``model.safetensors.index.json``) or ``pytorch_model.bin`` (needs torch) from a local directory. Each
tensor is read, transposed/reshaped to the Flax layout, cast, and stored before the next is read, so
peak host memory stays near one copy of the model in the target dtype (measured in BENCHMARKS.md).

Flax -> HF writes sharded safetensors, ``model.safetensors.index.json`` and ``config.json`` that
``transformers.AutoModelForCausalLM.from_pretrained`` loads with identical logits.

Layout map (HF ``nn.Linear.weight`` is ``[out, in]``; Flax kernels are ``[in, ...out]``)::

    model.embed_tokens.weight            [V, D]      -> embed_tokens/embedding     [V, D]
    model.layers.i.self_attn.q_proj.weight [H*hd, D] -> layers_i/self_attn/q_proj/kernel [D, H, hd]
    ...k_proj/v_proj                     [KV*hd, D]  -> .../kernel                 [D, KV, hd]
    ...o_proj.weight                     [D, H*hd]   -> .../o_proj/kernel          [H, hd, D]
    ...mlp.{gate,up}_proj.weight         [F, D]      -> .../kernel                 [D, F]
    ...mlp.down_proj.weight              [D, F]      -> .../kernel                 [F, D]
    ...{input,post_attention}_layernorm.weight, model.norm.weight -> .../scale    [D]
    lm_head.weight                       [V, D]      -> lm_head/kernel             [D, V]

No RoPE permutation: HF checkpoints already use the half-split rotary layout that
:mod:`jaxpref.models.llama` implements (see the test that a permuted q/k breaks parity).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from jaxpref.models.config import ModelConfig

log = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint directory is missing files, holds an unsupported model, or has a mis-shaped tensor."""


# ---- the per-tensor layout rules -------------------------------------------------------------------


_PLACEHOLDERS = {
    "i": r"\d+",
    "mlp": "gate_proj|up_proj|down_proj",
    "norm": "input_layernorm|post_attention_layernorm",
}


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    """``"a.{i}.b"`` -> an anchored regex with one named group per placeholder."""
    parts = re.split(r"\{(\w+)\}", template)
    out = ""
    for j, part in enumerate(parts):
        out += f"(?P<{part}>{_PLACEHOLDERS[part]})" if j % 2 else re.escape(part)
    return re.compile("^" + out + "$")


def _rules(cfg: ModelConfig):
    """``(HF name template, Flax path template, to_flax, to_hf)`` for every tensor kind."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads, cfg.dim_per_head

    def heads_in(n):
        return (lambda w: w.T.reshape(d, n, hd), lambda k: k.reshape(d, n * hd).T)

    def heads_bias(n):
        return (lambda b: b.reshape(n, hd), lambda b: b.reshape(n * hd))

    o_proj = (lambda w: w.T.reshape(h, hd, d), lambda k: k.reshape(h * hd, d).T)
    transpose = (lambda w: w.T, lambda k: k.T)
    same = (lambda w: w, lambda w: w)
    attn_hf, attn_fx = "model.layers.{i}.self_attn.", "layers_{i}/self_attn/"
    return [
        ("model.embed_tokens.weight", "embed_tokens/embedding", *same),
        (attn_hf + "q_proj.weight", attn_fx + "q_proj/kernel", *heads_in(h)),
        (attn_hf + "k_proj.weight", attn_fx + "k_proj/kernel", *heads_in(kv)),
        (attn_hf + "v_proj.weight", attn_fx + "v_proj/kernel", *heads_in(kv)),
        (attn_hf + "q_proj.bias", attn_fx + "q_proj/bias", *heads_bias(h)),
        (attn_hf + "k_proj.bias", attn_fx + "k_proj/bias", *heads_bias(kv)),
        (attn_hf + "v_proj.bias", attn_fx + "v_proj/bias", *heads_bias(kv)),
        (attn_hf + "o_proj.weight", attn_fx + "o_proj/kernel", *o_proj),
        (attn_hf + "o_proj.bias", attn_fx + "o_proj/bias", *same),
        ("model.layers.{i}.mlp.{mlp}.weight", "layers_{i}/mlp/{mlp}/kernel", *transpose),
        ("model.layers.{i}.mlp.{mlp}.bias", "layers_{i}/mlp/{mlp}/bias", *same),
        ("model.layers.{i}.{norm}.weight", "layers_{i}/{norm}/scale", *same),
        ("model.norm.weight", "norm/scale", *same),
        ("lm_head.weight", "lm_head/kernel", *transpose),
    ]


def _rename(name: str, rules, direction: int):
    """Map a name through the first matching rule: direction 0 = HF -> Flax, 1 = Flax -> HF.

    Returns ``(new_name, converter)`` or ``None`` when no rule matches."""
    for rule in rules:
        src, dst = (rule[0], rule[1]) if direction == 0 else (rule[1], rule[0])
        m = _template_regex(src).match(name)
        if m:
            return dst.format(**m.groupdict()), rule[2 + direction]
    return None


def _expected_shapes(cfg: ModelConfig, lm_head: bool = True) -> dict[str, tuple[int, ...]]:
    from jaxpref.models.llama import LlamaForCausalLM  # flax import only when converting
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    shapes = jax.eval_shape(lambda: LlamaForCausalLM(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                                                               return_hidden=not lm_head))
    flat = traverse_util.flatten_dict(shapes["params"], sep="/")
    return {k: tuple(getattr(v, "value", v).shape) for k, v in flat.items()}


# ---- reading -----------------------------------------------------------------------------------------


def load_hf_config(hf_dir: str, **compute) -> ModelConfig:
    """Read ``hf_dir/config.json`` into a :class:`ModelConfig` (``compute`` sets dtype/remat fields)."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"Model directory {hf_dir!r} does not exist; pass a local Hugging Face model directory.")
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing: {hf_dir!r} is not a Hugging Face model directory.")
    with open(path) as f:
        hf = json.load(f)
    try:
        return ModelConfig.from_hf_dict(hf, **compute)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _weight_files(hf_dir: str) -> tuple[list[str], str]:
    """The checkpoint's tensor files and their format (``safetensors`` or ``bin``)."""
    for index_name, single, fmt in ((SAFE_INDEX, SAFE_SINGLE, "safetensors"), (BIN_INDEX, BIN_SINGLE, "bin")):
        index = os.path.join(hf_dir, index_name)
        if os.path.exists(index):
            with open(index) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
            missing = [n for n in names if not os.path.exists(os.path.join(hf_dir, n))]
            if missing:
                raise CheckpointError(f"{index} lists {missing[0]} (and {len(missing) - 1} more) which is missing.")
            return [os.path.join(hf_dir, n) for n in names], fmt
        if os.path.exists(os.path.join(hf_dir, single)):
            return [os.path.join(hf_dir, single)], fmt
    raise CheckpointError(
        f"No weights in {hf_dir!r}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}."
    )


def _safetensors_dtypes() -> dict[str, np.dtype]:
    import ml_dtypes

    return {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
            "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
            "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool)}


def _read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Read a safetensors file tensor by tensor with plain ``readinto`` (no mmap).

    ``safetensors.safe_open`` memory-maps the file, and every mapped page read counts towards the
    process's resident memory until the file is closed -- a whole shard on top of the converted
    params. Reading each tensor into its own buffer keeps the peak at the params plus one tensor.
    The format is an 8-byte little-endian header size, a JSON header, then the raw tensor bytes.
    """
    dtypes = _safetensors_dtypes()
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        base = 8 + header_size
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in dtypes:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}.")
            start, end = info["data_offsets"]
            out = np.empty(info["shape"], dtype=dtypes[info["dtype"]])
            if out.nbytes != end - start:
                raise CheckpointError(f"{path}: tensor {name!r} is {end - start} bytes, expected {out.nbytes}.")
            f.seek(base + start)
            f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
            yield name, out


def iter_hf_tensors(hf_dir: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, numpy array)`` one tensor at a time, in file order."""
    files, fmt = _weight_files(hf_dir)
    if fmt == "safetensors":
        for path in files:
            yield from _read_safetensors(path)
    else:
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{files[0]} is a PyTorch pickle; reading it needs `pip install torch`.") from None
        import ml_dtypes

        for path in files:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for name in list(state):
                t = state.pop(name)
                if t.dtype == torch.bfloat16:
                    arr = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
                else:
                    arr = t.numpy()
                yield name, arr
            del state


def hf_to_flax_params(hf_dir: str, config: ModelConfig | None = None, dtype: Any = np.float32, *,
                      lm_head: bool = True, extras: tuple[str, ...] = (), extras_out: dict | None = None) -> dict:
    """Stream a local HF checkpoint into a nested dict of numpy arrays in the Flax layout.

    Args:
      hf_dir: local directory with ``config.json`` and weights.
      config: the model config (read from ``config.json`` when ``None``).
      dtype: storage dtype of the returned arrays (e.g. ``np.float32``, ``ml_dtypes.bfloat16``).
      lm_head: whether the model has an LM head (False: the decoder alone, e.g. a reward model's backbone;
        an ``lm_head.weight`` in the checkpoint is then ignored).
      extras: HF tensor names outside the decoder (e.g. ``"score.weight"``) to return, unconverted, in
        ``extras_out`` instead of raising.
    Raises:
      CheckpointError: missing files, unsupported architecture, unknown or mis-shaped tensor (named),
        or a tensor the model needs that the checkpoint lacks.
    """
    cfg = config or load_hf_config(hf_dir)
    rules = _rules(cfg)
    expected = _expected_shapes(cfg, lm_head=lm_head)
    dtype = np.dtype(dtype)
    flat: dict[str, np.ndarray] = {}
    for name, tensor in iter_hf_tensors(hf_dir):
        if name.endswith("rotary_emb.inv_freq"):
            continue  # buffers some old checkpoints carry; recomputed from the config
        if name == "lm_head.weight" and (cfg.tie_word_embeddings or not lm_head):
            continue
        if name in extras:
            if extras_out is not None:
                extras_out[name] = np.asarray(tensor, dtype=np.float32)
            continue
        renamed = _rename(name, rules, 0)
        if renamed is None:
            raise CheckpointError(f"{hf_dir}: unexpected tensor {name!r} for a {cfg.model_type} model.")
        path, to_flax = renamed
        if path not in expected:
            raise CheckpointError(f"{hf_dir}: tensor {name!r} maps to {path!r}, which this config does not have.")
        try:
            value = to_flax(tensor)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != expected[path]:
            raise CheckpointError(
                f"{hf_dir}: tensor {name!r} has shape {tuple(tensor.shape)}, which does not fit {path!r} of shape "
                f"{expected[path]} for config.json's sizes."
            )
        flat[path] = np.ascontiguousarray(value, dtype=dtype)
        del tensor, value
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise CheckpointError(f"{hf_dir}: checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[0]!r}.")
    return _unflatten(flat)


def _unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            flat.update(_flatten(v, key))
        else:
            flat[key] = v
    return flat


# ---- writing -----------------------------------------------------------------------------------------


class _PendingTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]  # builds the HF-layout array only when it is written

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _pending_hf_tensors(params: dict, config: ModelConfig, dtype: Any) -> list[_PendingTensor]:
    """Every HF tensor's name, shape and dtype, computed without materialising any converted array."""
    import jax

    rules = _rules(config)
    out = []
    for path, value in _flatten(params).items():
        renamed = _rename(path, rules, 1)
        if renamed is None:
            raise CheckpointError(f"Parameter {path!r} has no Hugging Face name; is this a jaxpref Llama params tree?")
        name, to_hf = renamed
        stored = np.dtype(dtype or value.dtype)
        shape = tuple(jax.eval_shape(to_hf, jax.ShapeDtypeStruct(value.shape, value.dtype)).shape)

        def produce(value=value, to_hf=to_hf, stored=stored):
            return np.ascontiguousarray(to_hf(np.asarray(value)), dtype=stored)

        out.append(_PendingTensor(name, shape, stored, produce))
    return out


def flax_to_hf_tensors(params: dict, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(HF name, numpy array)`` in HF layout, one tensor at a time."""
    for t in _pending_hf_tensors(params, config, None):
        yield t.name, t.produce()


def _write_safetensors(path: str, tensors: list[_PendingTensor]) -> None:
    """Write a safetensors file one tensor at a time (``safetensors.numpy.save_file`` needs them all in memory)."""
    codes = {v: k for k, v in _safetensors_dtypes().items()}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors:
            arr = t.produce()
            if arr.shape != t.shape:
                raise CheckpointError(f"{t.name}: produced shape {arr.shape}, planned {t.shape}.")
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))


def save_hf_checkpoint(
    params: dict,
    config: ModelConfig,
    out_dir: str,
    *,
    dtype: Any = None,
    max_shard_bytes: int = 2 * 1024**3,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> str:
    """Write ``params`` as a HF checkpoint directory: sharded safetensors + index + ``config.json``.

    ``dtype`` (default: the params' own) sets the stored dtype. ``extra_tensors`` are written as-is
    (used for a reward model's scalar head). Tensors are converted and written one at a time, so peak
    host memory is the params plus one tensor. Returns ``out_dir``.
    """
    import ml_dtypes

    os.makedirs(out_dir, exist_ok=True)
    pending = _pending_hf_tensors(params, config, dtype)
    for name, arr in (extra_tensors or {}).items():
        arr = np.asarray(arr)
        pending.append(_PendingTensor(name, arr.shape, arr.dtype, lambda arr=arr: np.ascontiguousarray(arr)))
    shards: list[list[_PendingTensor]] = [[]]
    size = 0
    for t in pending:
        if size and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes

    weight_map = {}
    n = len(shards)
    for i, shard in enumerate(shards):
        fname = SAFE_SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        _write_safetensors(os.path.join(out_dir, fname), shard)
        weight_map.update({t.name: fname for t in shard})
    if n > 1:
        total = sum(t.nbytes for t in pending)
        with open(os.path.join(out_dir, SAFE_INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    torch_dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
                   np.dtype(ml_dtypes.bfloat16): "bfloat16"}.get(pending[0].dtype, "float32")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(torch_dtype), f, indent=2)
    return out_dir


# ---- GGUF -------------------------------------------------------------------------------------------


def gguf_to_hf_dir(gguf_path: str, out_dir: str) -> str:
    """Dequantize a Llama-architecture GGUF file into a plain HF directory (weights + tokenizer).

    Uses transformers' GGUF loader (needs ``torch`` and ``gguf``). transformers refuses to save a
    GGUF-loaded model, so the state dict is moved into a plain ``LlamaForCausalLM`` built from the same
    config without ``quantization_config``. Writes ``out_dir/.complete`` last, so an interrupted
    conversion is redone rather than half-used.
    """
    if os.path.exists(os.path.join(out_dir, ".complete")):
        return out_dir
    if not os.path.exists(gguf_path):
        raise CheckpointError(f"GGUF file {gguf_path!r} does not exist.")
    try:
        import torch
        import transformers
    except ImportError:
        raise CheckpointError("GGUF import needs torch, transformers and gguf: pip install torch gguf") from None
    directory, fname = os.path.split(os.path.abspath(gguf_path))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=fname, dtype=torch.float32)
    hf_config = loaded.config
    if getattr(hf_config, "model_type", None) not in ("llama", "mistral"):
        raise CheckpointError(f"{gguf_path}: unsupported architecture {hf_config.model_type!r} (need llama/mistral).")
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    plain = type(loaded)(hf_config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=fname)
    tokenizer.save_pretrained(out_dir)
    open(os.path.join(out_dir, ".complete"), "w").close()
    return out_dir
