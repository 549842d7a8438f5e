"""Hugging Face Llama/Mistral checkpoints <-> jaxpref Flax params, tensor by tensor.

HF -> Flax reads ``config.json`` plus ``model.safetensors``, sharded safetensors
(``model.safetensors.index.json``) or ``pytorch_model.bin`` (needs torch) from a local directory or a Hub
id already in the local Hugging Face cache (:func:`resolve_model_dir`). Each tensor is read,
transposed/reshaped to the Flax layout, cast, and stored before the next is read, so peak host memory
stays near one copy of the model in the target dtype (measured in BENCHMARKS.md). Every read is checked:
invalid JSON, a shard the index names but the directory lacks, and a safetensors file shorter than its
header says (checked for every shard before the first tensor is read, and again at every read) are each
a one-line :class:`CheckpointError` naming the file (and tensor).

Flax -> HF (:func:`export_hf`) writes sharded safetensors and their index tensor by tensor, and
``config.json`` (``LlamaConfig``/``MistralConfig``), the tokenizer and ``generation_config.json`` through
transformers' own classes, so ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` load it with
identical logits and the same chat template. :func:`read_train_checkpoint_params` reads only the params
of a training checkpoint (orbax, ``<workdir>/checkpoints/<step>``) for export.

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

from jaxpref.errors import UserError
from jaxpref.models.config import SUPPORTED_MODEL_TYPES, ModelConfig

log = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable, truncated, holds an unsupported model, or has a mis-shaped tensor.

    The message is one line naming the file (and tensor) and what would fix it."""


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


# ---- locating and reading ----------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_dir(name_or_path: str, *, revision: str | None = None) -> str:
    """A local directory for ``name_or_path``: an existing directory as is, else a Hub id (``"org/name"``)
    looked up in the local Hugging Face cache only (jaxpref never downloads).

    The cache is ``$HF_HUB_CACHE`` as set when this is called (else huggingface_hub's default,
    ``~/.cache/huggingface/hub``), laid out as ``models--org--name/{refs/<revision>, snapshots/<hash>/}``;
    ``revision`` defaults to ``main``.

    Raises:
      CheckpointError: a path that does not exist, or a Hub id that is not in the local cache.
    """
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        return path
    if not _HUB_ID.match(path) or os.path.exists(path):
        raise CheckpointError(f"Model directory {name_or_path!r} does not exist; pass a local Hugging Face model "
                              "directory (config.json + safetensors) or a Hub id in the local cache.")
    from huggingface_hub import constants, snapshot_download

    cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE  # the variable as set now, not at import
    try:
        return snapshot_download(path, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, IncompleteSnapshotError, HFValidationError, OSError
        raise CheckpointError(
            f"{name_or_path!r} is not a local directory and not in the local Hugging Face cache ({cache_dir}; "
            f"{type(e).__name__}); jaxpref works offline: pass a local model directory, or download it first "
            f"(`hf download {path}`).") from None


def read_json(path: str) -> Any:
    """Parse a JSON file, raising a one-line :class:`CheckpointError` naming ``path`` if it is missing,
    unreadable or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                              "re-download or re-export the checkpoint.") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text; re-download or re-export the checkpoint.") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e}).") from None


def load_hf_config(hf_dir: str, **compute) -> ModelConfig:
    """Read ``hf_dir/config.json`` into a :class:`ModelConfig` (``compute`` sets dtype/remat fields).

    Raises:
      CheckpointError: no such directory, no or invalid ``config.json``, or an unsupported architecture.
    """
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"Model directory {hf_dir!r} does not exist; pass a local Hugging Face model directory.")
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing: {hf_dir!r} is not a Hugging Face model directory.")
    hf = read_json(path)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} holds a JSON {type(hf).__name__}, not an object; it is not a model config.")
    try:
        return ModelConfig.from_hf_dict(hf, **compute)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _weight_files(hf_dir: str) -> tuple[list[str], str]:
    """The checkpoint's tensor files and their format (``safetensors`` or ``bin``).

    Raises:
      CheckpointError: no weights, an invalid index, or an index naming a shard that is not there.
    """
    for index_name, single, fmt in ((SAFE_INDEX, SAFE_SINGLE, "safetensors"), (BIN_INDEX, BIN_SINGLE, "bin")):
        index = os.path.join(hf_dir, index_name)
        if os.path.exists(index):
            parsed = read_json(index)
            weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no 'weight_map' (tensor name -> shard file); re-download or "
                                      "re-export the checkpoint.")
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not os.path.isfile(os.path.join(hf_dir, n))]
            if missing:
                more = f" (and {len(missing) - 1} more shards)" if len(missing) > 1 else ""
                raise CheckpointError(f"{index} names shard {missing[0]!r}{more}, which is not in {hf_dir}; "
                                      "the download is incomplete: fetch the missing shard files.")
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


class _TensorEntry(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offsets of the tensor's bytes: [start, end)
    end: int


def _safetensors_layout(f, path: str, file_size: int) -> list[_TensorEntry]:
    """Parse and check a safetensors header; the tensors in file order, with absolute byte ranges.

    The format is an 8-byte little-endian header size ``n``, ``n`` bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` (offsets relative to byte ``8 + n``),
    then the raw bytes. Every range is checked against the file size here, before any tensor is read, so a
    truncated file is refused up front rather than loaded as garbage.
    """
    prefix = f.read(8)
    if len(prefix) != 8:
        raise CheckpointError(f"{path} is {file_size} bytes, too short for a safetensors file (needs an 8-byte "
                              "header size); re-download or re-export it.")
    header_size = int.from_bytes(prefix, "little")
    if 8 + header_size > file_size:
        raise CheckpointError(f"{path} is truncated: its header alone needs {8 + header_size} bytes but the file "
                              f"is {file_size} bytes; re-download or re-export it.")
    try:
        header = json.loads(f.read(header_size))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON; the file is corrupt, "
                              "re-download or re-export it.") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object; the file is corrupt.")
    header.pop("__metadata__", None)
    dtypes = _safetensors_dtypes()
    base = 8 + header_size
    entries = []
    for name, info in header.items():
        try:
            kind, shape, (start, end) = info["dtype"], tuple(int(n) for n in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}; the file is "
                                  "corrupt.") from None
        if kind not in dtypes:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {kind}.")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtypes[kind].itemsize
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end) or end - start != nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} spans data offsets [{start}, {end}) but its dtype {kind} "
                                  f"and shape {list(shape)} need {nbytes} bytes; the file is corrupt.")
        entries.append(_TensorEntry(name, dtypes[kind], shape, base + start, base + end))
    entries.sort(key=lambda e: e.start)
    need = max((e.end for e in entries), default=base)
    if need > file_size:
        first = next(e for e in entries if e.end > file_size)
        raise CheckpointError(
            f"{path} is truncated: tensor {first.name!r} needs bytes {first.start}..{first.end} but the file is "
            f"{file_size} bytes (its header expects {need}); re-download or re-export it.")
    return entries


def _read_exact(f, out: np.ndarray, path: str, name: str) -> None:
    """Fill ``out`` from ``f``; a short read (the file shrank since its size was checked) is an error."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got != len(view):
        raise CheckpointError(f"{path}: tensor {name!r} read {got} of its {len(view)} bytes (the file was truncated "
                              "or changed while reading); re-download or re-export it.")


def _open_checked(path: str):
    try:
        return open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e}).") from None


def check_safetensors(path: str) -> list[_TensorEntry]:
    """Parse ``path``'s header and check it against the file's size, reading no tensor data.

    Raises:
      CheckpointError: a truncated or corrupt file (naming the file, the first tensor past the end, and the
        expected vs actual size).
    """
    with _open_checked(path) as f:
        return _safetensors_layout(f, path, os.fstat(f.fileno()).st_size)


def _read_safetensors(path: str, entries: list[_TensorEntry] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Read a safetensors file tensor by tensor with plain ``readinto`` (no mmap).

    ``safetensors.safe_open`` memory-maps the file, and every mapped page read counts towards the
    process's resident memory until the file is closed -- a whole shard on top of the converted
    params. Reading each tensor into its own buffer keeps the peak at the params plus one tensor.
    The header is checked against the file size before the first tensor is read (``entries``, when the
    caller has already checked it), and every read's byte count is checked (:func:`_read_exact`).
    """
    with _open_checked(path) as f:
        if entries is None:
            entries = _safetensors_layout(f, path, os.fstat(f.fileno()).st_size)
        for e in entries:
            out = np.empty(e.shape, dtype=e.dtype)
            f.seek(e.start)
            _read_exact(f, out, path, e.name)
            yield e.name, out


def iter_hf_tensors(hf_dir: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, numpy array)`` one tensor at a time, in file order.

    Every safetensors shard's header is checked against its file size before the first tensor is read,
    so a truncated last shard fails before any conversion work."""
    files, fmt = _weight_files(hf_dir)
    if fmt == "safetensors":
        layouts = [check_safetensors(path) for path in files]
        for path, entries in zip(files, layouts):
            yield from _read_safetensors(path, entries)
    else:
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{files[0]} is a PyTorch pickle; reading it needs `pip install torch`.") from None
        import ml_dtypes

        for path in files:
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # truncated zip, bad pickle, not a torch file: RuntimeError, EOFError, ...
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise CheckpointError(f"{path} cannot be loaded by torch ({type(e).__name__}: {first}); "
                                      "re-download or re-export it.") from None
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
        if path in flat:
            raise CheckpointError(f"{hf_dir}: tensor {name!r} appears twice (in two shards); the checkpoint is "
                                  "inconsistent, re-download or re-export it.")
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


def _check_params_fit(params: dict, config: ModelConfig, *, lm_head: bool) -> None:
    """Refuse params whose tree or shapes do not match ``config`` (e.g. a config.json of another model)."""
    expected = _expected_shapes(config, lm_head=lm_head)
    got = {k: tuple(np.shape(v)) for k, v in _flatten(params).items()}
    for k in sorted(set(expected) | set(got)):
        if k not in got:
            raise CheckpointError(f"The params lack {k!r}, which the model config (vocab_size={config.vocab_size}, "
                                  f"hidden_size={config.hidden_size}, ...) needs; is this the right config?")
        if k not in expected:
            raise CheckpointError(f"Parameter {k!r} does not exist in a model of this config; is this a jaxpref "
                                  "Llama params tree, and the right config?")
        if got[k] != expected[k]:
            raise CheckpointError(f"Parameter {k!r} has shape {got[k]} but the model config gives {expected[k]}; "
                                  "pass the config.json of the model these params were trained from.")


def _grow_vocab(pending: list[_PendingTensor], vocab_size: int) -> list[_PendingTensor]:
    """Append zero rows to the embedding (and LM head) so they have ``vocab_size`` rows (HF ``[V, D]``)."""
    out = []
    for t in pending:
        if t.name in ("model.embed_tokens.weight", "lm_head.weight") and t.shape[0] < vocab_size:
            extra = vocab_size - t.shape[0]

            def produce(t=t, extra=extra):
                return np.concatenate([t.produce(), np.zeros((extra, *t.shape[1:]), t.dtype)])

            t = _PendingTensor(t.name, (vocab_size, *t.shape[1:]), t.dtype, produce)
        out.append(t)
    return out


CAUSAL_LM_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def hf_dtype_name(dtype: Any) -> str:
    """The name transformers writes for a stored dtype (``float32``, ``float16``, ``bfloat16``)."""
    import ml_dtypes

    return {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
            np.dtype(ml_dtypes.bfloat16): "bfloat16"}.get(np.dtype(dtype), "float32")


def hf_config(config: ModelConfig, *, dtype: str = "float32", model_type: str | None = None, **fields):
    """The transformers config object (``LlamaConfig`` or ``MistralConfig``) describing ``config``.

    Args:
      config: the jaxpref model config.
      dtype: the stored weights' dtype name, written once as transformers writes it (``"dtype"``).
      model_type: ``"llama"`` or ``"mistral"``, which class to use (default: ``config.model_type``).
      fields: constructor arguments that override the derived ones (``architectures``, ``pad_token_id``,
        ``vocab_size``, ``id2label``, ...). ``architectures`` defaults to ``[<Class>ForCausalLM]``.
    Raises:
      CheckpointError: the chosen class cannot express the model (Mistral has no biases; Llama no window).
    """
    import inspect

    import transformers

    model_type = model_type or config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"Cannot export as model_type {model_type!r}; jaxpref exports "
                              f"{list(SUPPORTED_MODEL_TYPES)}.")
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[model_type]
    derived = config.to_hf_dict(dtype)
    derived["sliding_window"] = config.sliding_window if config.model_type == "mistral" else None
    accepted = set(inspect.signature(cls.__init__).parameters)
    lost = [k for k in ("attention_bias", "mlp_bias", "sliding_window") if derived.get(k) and k not in accepted]
    if lost:
        raise CheckpointError(f"A {cls.__name__} cannot express {lost[0]}={derived[lost[0]]!r}; export this model "
                              f"with its own model_type ({config.model_type!r}).")
    # one dtype key (transformers 5 writes ``dtype``; ``torch_dtype`` is its deprecated alias)
    kwargs = {k: v for k, v in derived.items() if k in accepted and k not in ("dtype", "torch_dtype", "architectures")}
    kwargs.update(architectures=[CAUSAL_LM_ARCHITECTURES[model_type]], dtype=dtype)
    kwargs.update(fields)
    return cls(**kwargs)


def _remove_stale_weights(out_dir: str) -> None:
    """Delete weight files of an earlier export in ``out_dir``: transformers would load a stale
    ``model.safetensors`` in preference to a new sharded index (or mix shards of two exports)."""
    for name in os.listdir(out_dir):
        if name in (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX) or re.fullmatch(
                r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)", name):
            os.remove(os.path.join(out_dir, name))


def save_hf_checkpoint(params: dict, config: ModelConfig, out_dir: str, **options) -> str:
    """Write ``params`` as HF weights (sharded safetensors + index) and ``config.json``; return ``out_dir``.

    ``options`` are those of :func:`write_weights_and_config` (``dtype``, ``max_shard_bytes``, ...). For a
    complete directory with tokenizer and generation config use :func:`export_hf`.
    """
    write_weights_and_config(params, config, out_dir, **options)
    return out_dir


def write_weights_and_config(
    params: dict,
    config: ModelConfig,
    out_dir: str,
    *,
    dtype: Any = None,
    max_shard_bytes: int = 2 * 1024**3,
    extra_tensors: dict[str, np.ndarray] | None = None,
    lm_head: bool = True,
    model_type: str | None = None,
    vocab_size: int | None = None,
    config_fields: dict | None = None,
):
    """Write ``params`` as HF weights (sharded safetensors + index) and ``config.json``; return the
    transformers config object written.

    Args:
      params: jaxpref params of :class:`~jaxpref.models.llama.LlamaForCausalLM` (numpy or jax arrays).
      config: their model config; the params' tree and shapes are checked against it first.
      dtype: stored dtype (default: the params' own).
      max_shard_bytes: largest shard; more tensors go to ``model-0000i-of-0000n.safetensors``.
      extra_tensors: HF-named tensors written as-is (a reward model's ``score.weight``).
      lm_head: whether the params have an LM head (False: a reward model's backbone).
      model_type: config class to write (see :func:`hf_config`).
      vocab_size: export with this many embedding rows (>= ``config.vocab_size``); the added rows are
        zeros (used to give a reward model a pad id no tokenizer token uses).
      config_fields: more :func:`hf_config` overrides (``architectures``, ``pad_token_id``, ``id2label``, ...).

    Tensors are converted and written one at a time, so peak host memory is the params plus one tensor.
    Weight files of an earlier export in ``out_dir`` are removed first.
    """
    _check_params_fit(params, config, lm_head=lm_head)
    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_weights(out_dir)
    pending = _pending_hf_tensors(params, config, dtype)
    stored_dtype = pending[0].dtype
    if vocab_size is not None and vocab_size != config.vocab_size:
        if vocab_size < config.vocab_size:
            raise ValueError(f"vocab_size={vocab_size} < the model's {config.vocab_size}")
        pending = _grow_vocab(pending, vocab_size)
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
    fields = dict(config_fields or {})
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    cfg = hf_config(config, dtype=hf_dtype_name(stored_dtype), model_type=model_type, **fields)
    cfg.save_pretrained(out_dir)
    return cfg


# ---- complete Hugging Face directories ----------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def has_tokenizer(directory: str) -> bool:
    """Whether ``directory`` holds tokenizer files (``tokenizer.json``, ``tokenizer_config.json`` or
    ``tokenizer.model``)."""
    return any(os.path.isfile(os.path.join(directory, n)) for n in _TOKENIZER_FILES)


def load_export_tokenizer(tokenizer: Any):
    """A transformers tokenizer from a directory, a cached Hub id, a transformers tokenizer, or a
    jaxpref :class:`~jaxpref.data.tokenize.HFTokenizer` (its ``.tok``).

    Raises:
      CheckpointError: the directory has no tokenizer transformers can load.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        import transformers

        directory = resolve_model_dir(os.fspath(tokenizer))
        if not has_tokenizer(directory):
            raise CheckpointError(f"{directory} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); pass the "
                                  "directory of the tokenizer the model was trained with.")
        try:
            return transformers.AutoTokenizer.from_pretrained(directory)
        except Exception as e:  # invalid JSON, missing sentencepiece model, unknown class, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"{directory}: transformers cannot load its tokenizer ({type(e).__name__}: "
                                  f"{first}).") from None
    if hasattr(tokenizer, "save_pretrained"):
        return tokenizer
    inner = getattr(tokenizer, "tok", None)
    if hasattr(inner, "save_pretrained"):
        return inner
    raise TypeError(f"tokenizer must be a directory, a transformers tokenizer or a jaxpref HFTokenizer, "
                    f"not {type(tokenizer).__name__}")


def source_model_type(source_dir: str | None) -> str | None:
    """``model_type`` of ``source_dir/config.json`` when that is a supported one, else None."""
    if not source_dir or not os.path.isfile(os.path.join(source_dir, "config.json")):
        return None
    hf = read_json(os.path.join(source_dir, "config.json"))
    kind = hf.get("model_type") if isinstance(hf, dict) else None
    return kind if kind in SUPPORTED_MODEL_TYPES else None


def _write_generation_config(out_dir: str, cfg, source_dir: str | None, generation_config: Any) -> None:
    """``generation_config.json``: the one given, else the source checkpoint's, else derived from ``cfg``."""
    from transformers import GenerationConfig

    if generation_config is None and source_dir and os.path.isfile(os.path.join(source_dir, "generation_config.json")):
        path = os.path.join(source_dir, "generation_config.json")
        gen = GenerationConfig.from_dict(read_json(path))
    elif generation_config is None:
        gen = GenerationConfig.from_model_config(cfg)
    elif isinstance(generation_config, dict):
        gen = GenerationConfig.from_dict(generation_config)
    else:
        gen = generation_config
    gen.save_pretrained(out_dir)


def export_hf(
    params: dict,
    config: ModelConfig,
    out_dir: str,
    *,
    dtype: Any = None,
    tokenizer_dir: Any = None,
    source_dir: str | None = None,
    generation_config: Any = None,
    max_shard_bytes: int = 2 * 1024**3,
) -> str:
    """Write a complete Hugging Face causal-LM directory: weights, ``config.json``, tokenizer files and
    ``generation_config.json``, all but the weights through transformers' own classes.

    Args:
      params, config: the model (host numpy or jax arrays; converted one tensor at a time).
      out_dir: output directory (created; an earlier export's weight files are replaced).
      dtype: stored weight dtype (default: the params' own); ``config.json``'s ``dtype`` says the same.
      tokenizer_dir: a tokenizer directory / cached Hub id / tokenizer object to save with the weights
        (default: ``source_dir`` when it has tokenizer files); saved with ``save_pretrained``, so
        ``AutoTokenizer.from_pretrained(out_dir)`` gives the same ids and chat template.
      source_dir: the checkpoint the params were trained from: its ``model_type`` picks the config class
        (a Mistral source exports as ``MistralConfig``) and its ``generation_config.json`` is kept.
      generation_config: a ``transformers.GenerationConfig`` or dict; default the source's, else
        ``GenerationConfig.from_model_config(config)``.
      max_shard_bytes: largest safetensors shard.
    Returns ``out_dir``.
    Raises:
      CheckpointError: params that do not fit ``config``, an unloadable tokenizer or one with more tokens
        than the model's vocabulary, an unreadable source file.
    """
    source_dir = resolve_model_dir(source_dir) if source_dir else None
    if tokenizer_dir is None and source_dir and has_tokenizer(source_dir):
        tokenizer_dir = source_dir
    tokenizer = None if tokenizer_dir is None else load_export_tokenizer(tokenizer_dir)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"The tokenizer ({getattr(tokenizer, 'name_or_path', '')!s}) has {len(tokenizer)} tokens "
                              f"but the model's vocabulary has {config.vocab_size}; pass the model's own tokenizer.")
    cfg = write_weights_and_config(params, config, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes,
                                   model_type=source_model_type(source_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    _write_generation_config(out_dir, cfg, source_dir, generation_config)
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


# ---- training checkpoints (orbax) --------------------------------------------------------------------


def train_checkpoint_step_dir(src: str, step: int | None = None) -> str:
    """The step directory of a jaxpref training checkpoint.

    ``src`` is a run's workdir, its ``checkpoints/`` directory (an orbax ``CheckpointManager`` root) or a
    step directory ``checkpoints/<step>`` (holding the items ``state`` and ``meta``). ``step`` picks a step
    (default: the one in ``src``, else the latest).

    Raises:
      CheckpointError: no checkpoint there, or no such step (the message lists the steps present).
    """
    src = os.path.abspath(src)
    if os.path.isdir(os.path.join(src, "state")):
        if step is not None and os.path.basename(src) != str(step):
            raise CheckpointError(f"{src} is the checkpoint of step {os.path.basename(src)}, not {step}; pass the "
                                  "workdir or its checkpoints/ directory with --step, or the step directory alone.")
        return src
    root = os.path.join(src, "checkpoints") if os.path.isdir(os.path.join(src, "checkpoints")) else src
    if not os.path.isdir(root):
        raise CheckpointError(f"{src} does not exist; pass a run's workdir, its checkpoints/ directory or "
                              "checkpoints/<step>.")
    steps = sorted(int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n, "state")))
    if not steps:
        raise CheckpointError(f"No training checkpoint in {root}: expected <step>/state directories written by "
                              "jaxpref's trainer.")
    if step is None:
        return os.path.join(root, str(steps[-1]))
    if step not in steps:
        raise CheckpointError(f"{root} has no checkpoint of step {step}; it has steps {steps}.")
    return os.path.join(root, str(step))


def read_train_checkpoint_params(step_dir: str, part: str | None = None) -> dict:
    """Only the model params of a training checkpoint, as host numpy arrays (optimizer state and RNG are
    not read).

    The checkpoint's ``state`` item is a ``TrainState`` pytree ``{step, params, opt_state, rng}`` (or,
    for APO, ``{"policy": TrainState, "rm": TrainState}``: ``part`` names which). The sub-tree
    ``[part.]params`` is restored with orbax's partial restore, its structure taken from the checkpoint's
    own metadata, so neither the model config nor the optimizer is needed to read it.

    Raises:
      CheckpointError: no ``state`` item, unreadable metadata, no params, or a missing/unknown ``part``.
    """
    import jax
    import orbax.checkpoint as ocp

    state_dir = os.path.join(os.path.abspath(step_dir), "state")
    if not os.path.isdir(state_dir):
        raise CheckpointError(f"{step_dir} has no 'state' item; it is not a jaxpref training checkpoint step.")
    checkpointer = ocp.PyTreeCheckpointer()
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # orbax warns that a bare item directory has no step metadata
    try:
        try:
            meta = checkpointer.metadata(state_dir)
        except Exception as e:
            raise CheckpointError(f"{state_dir}: orbax cannot read the checkpoint's metadata ({type(e).__name__}); "
                                  "the checkpoint is incomplete or corrupt.") from None
        tree = getattr(getattr(meta, "item_metadata", None), "tree", None) or meta
        if not isinstance(tree, dict):
            raise CheckpointError(f"{state_dir}: unexpected checkpoint structure ({type(tree).__name__}).")
        parts = sorted(k for k, v in tree.items() if isinstance(v, dict) and "params" in v)
        if "params" in tree and part is None:
            item = {"params": tree["params"]}
        elif part is not None and part in parts:
            item = {part: {"params": tree[part]["params"]}}
        elif part is not None:
            raise CheckpointError(f"{state_dir} has no state {part!r}; it has {parts or 'a single state'}.")
        elif parts:
            raise CheckpointError(f"{state_dir} holds several states {parts}; choose one (part=..., on the "
                                  f"command line --part {parts[0]}).")
        else:
            raise CheckpointError(f"{state_dir} has no 'params' (keys: {sorted(tree)}); not a jaxpref TrainState.")
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        try:
            out = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
        except Exception as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise CheckpointError(f"{state_dir}: orbax cannot restore the params ({type(e).__name__}: {first}); the "
                                  "checkpoint is incomplete or corrupt.") from None
    finally:
        absl_log.setLevel(level)
    return out[part]["params"] if part is not None else out["params"]
