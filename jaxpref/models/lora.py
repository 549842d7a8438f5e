"""LoRA adapters for the Llama/Mistral decoder, kept outside the model and outside the base params.

LoRA (Hu et al., 2021) freezes a linear map ``y = x W`` and learns a low-rank update::

    y = x W + scale * dropout(x) A B,      A: [*in, r],  B: [r, *out],  scale = alpha / r

so ``W + scale * A B`` is the merged weight (PEFT's default scaling; rsLoRA's ``alpha / sqrt(r)`` is not
offered). ``in``/``out`` are the kernel's own axes in the Flax layout, so a multi-axis kernel keeps its
axes: ``q_proj`` ``[D, H, hd]`` gets ``A [D, r]``, ``B [r, H, hd]``; ``o_proj`` ``[H, hd, D]`` gets
``A [H, hd, r]``, ``B [r, D]``; ``gate_proj``/``up_proj`` ``[D, F]`` get ``A [D, r]``, ``B [r, F]``;
``down_proj`` ``[F, D]`` gets ``A [F, r]``, ``B [r, D]``.

Usage::

    settings = LoraSettings(rank=16, alpha=32, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    adapters = init_lora(config, settings, rng)                     # float32, B = 0
    logits = apply_lora(model, params, adapters, ids, attention_mask=mask, settings=settings)
    ref = apply_lora(model, params, adapters, ids, attention_mask=mask, settings=settings, enabled=False)
    grads = jax.grad(lambda a: loss(apply_lora(model, params, a, ids, settings=settings)))(adapters)
    merged = merge_lora(params, adapters, config, settings)         # plain params, HF-exportable
    save_peft_adapter(adapters, config, settings, out_dir, base_model_name_or_path="...")

How it is attached (and why not qwix). The adapters are a separate pytree that mirrors the module
paths of the base params, e.g. ``{"layers_0": {"self_attn": {"q_proj": {"lora_a": A, "lora_b": B}}}}``.
:func:`apply_lora` passes it to ``model.apply`` as the variable collection ``"lora"`` and runs the
model under ``flax.linen.intercept_methods``: when a module that owns ``lora/lora_a`` is called, its
output gets ``scale * (x A) B`` added. The model file knows nothing about LoRA; Flax lifts the
collection (and the dropout RNG stream) through ``nn.remat`` like any other; ``jax.grad`` with respect
to the adapters alone never differentiates the base. qwix (the library Tunix uses) was tried first
(qwix 0.1.8 with flax 0.12.8): its provider handles ``nn.Dense`` but fails on this model's ``Projection``
modules (q/k/v/o, which call ``jnp.einsum`` on multi-axis kernels) with Flax's
``SetAttributeFrozenModuleError`` (it stores a debug attribute on the frozen module); it also stores the
adapters *inside* the base params (``kernel_lora_a`` beside ``kernel``) in the base's dtype (bf16
adapters on a bf16 base) with an unnamed rank axis. The wrapper here is ~40 lines and has none of those
limits, so it is used instead.

Initialisation follows PEFT's default ``init_lora_weights=True``: ``B = 0`` and
``A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``torch.nn.init.kaiming_uniform_(a=sqrt(5))`` on PEFT's
``[r, fan_in]`` weight, ``fan_in`` = the product of the input axes), in float32. The numbers drawn
differ from torch's, the distribution is the same.

Logical axis names (for :mod:`jaxpref.sharding`): ``A`` carries the kernel's input names plus
``"lora_rank"``, ``B`` ``"lora_rank"`` plus the kernel's output names, e.g. ``q_proj``:
``A ("embed", "lora_rank")``, ``B ("lora_rank", "heads", "head_dim")``. ``"lora_rank"`` maps to no mesh
axis (a name missing from the rule table is replicated), so ``x A`` is sharded like ``x`` and
``(x A) B`` like the base projection's output.

Precision: the update is computed in the projection's compute dtype (``config.dtype``), with ``A``
and ``B`` cast to it, as the base kernel is; the adapters themselves stay float32 (their gradients
too) whatever the base's ``param_dtype``. (PEFT computes the branch in the adapters' dtype instead; the
two agree in float32. Computing it in bf16 under a bf16 model avoids a float32 copy of every adapted
projection's input in the saved activations.)

PEFT format: :func:`save_peft_adapter` writes ``adapter_config.json`` and ``adapter_model.safetensors``
with PEFT's names (``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` ``[r, in]``,
``...lora_B.weight`` ``[out, r]``, ``in``/``out`` flattened in HF's order), which
``peft.PeftModel.from_pretrained`` loads onto the transformers model; :func:`load_peft_adapter` reads
such a directory back (PEFT itself is not needed for either).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxpref.errors import ConfigError
from jaxpref.models.config import ModelConfig
from jaxpref.models.convert import CheckpointError

Array = jax.Array

#: The variable collection and RNG stream names used inside ``model.apply``.
COLLECTION = "lora"
DROPOUT_RNG = "lora_dropout"
#: Logical axis name of the rank axis of ``A`` and ``B`` (mapped to no mesh axis).
RANK_AXIS = "lora_rank"

#: PEFT module name -> (parent module in both HF and Flax, number of input axes of the Flax kernel).
TARGETS: dict[str, tuple[str, int]] = {
    "q_proj": ("self_attn", 1),
    "k_proj": ("self_attn", 1),
    "v_proj": ("self_attn", 1),
    "o_proj": ("self_attn", 2),
    "gate_proj": ("mlp", 1),
    "up_proj": ("mlp", 1),
    "down_proj": ("mlp", 1),
}

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA hyperparameters, with PEFT's names and defaults (``LoraConfig``) except ``rank``.

    * ``rank``: ``r``; ``0`` turns LoRA off (:func:`init_lora` returns ``None``).
    * ``alpha``: ``lora_alpha``; the update is scaled by ``scale = alpha / rank``.
    * ``dropout``: ``lora_dropout``, applied to the adapter's input only (``dropout(x) A B``), and only
      when :func:`apply_lora` gets a ``dropout_rng``.
    * ``target_modules``: PEFT module names among :data:`TARGETS`; PEFT's default for Llama/Mistral is
      ``("q_proj", "v_proj")``.
    """

    rank: int = 0
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError(f"lora.rank={self.rank!r}: use a non-negative integer (0 turns LoRA off).")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha={self.alpha!r}: use a positive number (the update is scaled by alpha/rank).")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout!r}: use a probability in [0, 1).")
        unknown = [m for m in self.target_modules if m not in TARGETS]
        if unknown or not self.target_modules:
            raise ConfigError(
                f"lora.target_modules={list(self.target_modules)!r}: "
                f"{'unknown ' + repr(unknown[0]) if unknown else 'empty'}; choose from {list(TARGETS)}."
            )
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ConfigError(f"lora.target_modules={list(self.target_modules)!r} names a module twice.")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        """``alpha / rank`` (PEFT's default scaling)."""
        return self.alpha / self.rank


# ---- shapes and names ---------------------------------------------------------------------------------


_KERNELS: dict[str, dict] = {}  # repr(config) -> _base_kernels(config): a 7B model's init takes seconds to trace


def _base_kernels(config: ModelConfig) -> dict[tuple[str, ...], nn.Partitioned]:
    """Abstract boxed base kernels (shape + logical names) by module path, computed without any weights."""
    from flax import traverse_util

    from jaxpref.models.llama import LlamaForCausalLM

    key = repr(config)
    if key not in _KERNELS:
        abstract = jax.eval_shape(
            lambda: LlamaForCausalLM(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                                                  return_hidden=True)
        )["params"]
        flat = traverse_util.flatten_dict(abstract, is_leaf=lambda _, v: isinstance(v, nn.Partitioned))
        _KERNELS[key] = {path[:-1]: box for path, box in flat.items() if path[-1] == "kernel"}
    return _KERNELS[key]


def _targets(config: ModelConfig, settings: LoraSettings):
    """``(module path, PEFT name, kernel shape, kernel logical names, number of input axes)`` per adapted
    projection, in layer order then :data:`TARGETS` order."""
    kernels = _base_kernels(config)
    out = []
    for i in range(config.num_hidden_layers):
        for name in TARGETS:
            if name not in settings.target_modules:
                continue
            parent, n_in = TARGETS[name]
            path = (f"layers_{i}", parent, name)
            box = kernels[path]
            out.append((path, name, tuple(box.value.shape), tuple(box.names), n_in))
    return out


def init_lora(config: ModelConfig, settings: LoraSettings, rng: Array | int = 0) -> dict | None:
    """Fresh adapters: ``A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PEFT's default), ``B = 0``, float32.

    Returns a nested dict mirroring the base params' module paths,
    ``{"layers_{i}": {"self_attn"|"mlp": {name: {"lora_a": A [*in, r], "lora_b": B [r, *out]}}}}``, or
    ``None`` when ``settings.rank == 0``. Jittable (``config``/``settings`` static), so it can be built
    directly sharded with ``jax.jit(..., out_shardings=...)`` and :func:`lora_logical_axes`.
    """
    if not settings.enabled:
        return None
    rng = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    targets = _targets(config, settings)
    keys = jax.random.split(rng, len(targets))
    out: dict = {}
    r = settings.rank
    for (path, _, shape, _, n_in), key in zip(targets, keys):
        fan_in = math.prod(shape[:n_in])
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(key, (*shape[:n_in], r), jnp.float32, -bound, bound)
        b = jnp.zeros((r, *shape[n_in:]), jnp.float32)
        _set(out, path, {"lora_a": a, "lora_b": b})
    return out


def lora_logical_axes(config: ModelConfig, settings: LoraSettings) -> dict | None:
    """Pytree (the structure of :func:`init_lora`'s output) of logical ``PartitionSpec``s:
    ``A``: the kernel's input names + ``"lora_rank"``; ``B``: ``"lora_rank"`` + its output names.
    Turn it into shardings with :func:`jaxpref.sharding.logical_to_sharding`."""
    if not settings.enabled:
        return None
    out: dict = {}
    for path, _, _, names, n_in in _targets(config, settings):
        _set(out, path, {"lora_a": PartitionSpec(*names[:n_in], RANK_AXIS),
                         "lora_b": PartitionSpec(RANK_AXIS, *names[n_in:])})
    return out


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or ``jax.ShapeDtypeStruct``s); ``None`` counts 0.

    Trainable/total for a LoRA run: ``count_params(adapters)`` and
    ``count_params(base_params) + count_params(adapters)``."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


# ---- forward -------------------------------------------------------------------------------------------


def lora_delta(x: Array, a: Array, b: Array, scale: float, dtype: Any) -> Array:
    """``scale * (x A) B`` for ``x [..., *in]``, ``A [*in, r]``, ``B [r, *out]`` -> ``[..., *out]``, in ``dtype``."""
    n_in, n_out = a.ndim - 1, b.ndim - 1
    letters = "abcdefghijk"  # never "r"
    ins, outs = letters[:n_in], letters[n_in : n_in + n_out]
    xa = jnp.einsum(f"...{ins},{ins}r->...r", x.astype(dtype), a.astype(dtype))
    return (scale * jnp.einsum(f"...r,r{outs}->...{outs}", xa, b.astype(dtype))).astype(dtype)


def _interceptor(scale: float, dropout: float, train: bool):
    """A ``nn.intercept_methods`` interceptor adding the LoRA update to every module owning ``lora/lora_a``."""

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not module.has_variable(COLLECTION, "lora_a"):
            return y
        x = args[0] if args else next(iter(kwargs.values()))
        if train and dropout > 0:
            # Inverted dropout on the adapter input, as torch.nn.Dropout in PEFT's lora_dropout.
            keep = jax.random.bernoulli(module.make_rng(DROPOUT_RNG), 1.0 - dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - dropout), jnp.zeros_like(x))
        a = module.get_variable(COLLECTION, "lora_a")
        b = module.get_variable(COLLECTION, "lora_b")
        return y + lora_delta(x, a, b, scale, y.dtype)

    return interceptor


def _check_paths(base_params: dict, adapter_params: dict) -> None:
    """Every adapter must sit at a base module that has a kernel (a misplaced one would be silently unused)."""
    from flax import traverse_util

    for path in traverse_util.flatten_dict(adapter_params):
        module, leaf = path[:-1], path[-1]
        node = base_params
        for key in module:
            node = node.get(key) if isinstance(node, Mapping) else None
        if leaf not in ("lora_a", "lora_b") or not isinstance(node, Mapping) or "kernel" not in node:
            raise ValueError(f"adapter leaf {'/'.join(path)!r} does not sit on a projection of the base params.")


def apply_lora(
    model: nn.Module,
    base_params: dict,
    adapter_params: dict | None,
    *args,
    settings: LoraSettings,
    enabled: bool = True,
    dropout_rng: Array | None = None,
    **kwargs,
):
    """``model.apply({"params": base_params}, *args, **kwargs)`` with the adapters' updates added.

    Every projection that has adapters computes ``x W + scale * dropout(x) A B`` (``scale =
    settings.alpha / settings.rank``); everything else (``return_hidden``, ``kv_cache``, masks) is the
    model's own call. With ``enabled=False`` or ``adapter_params=None`` this is exactly
    ``model.apply({"params": base_params}, ...)`` -- the DPO reference "adapters off" on the same base
    weights. Dropout (``settings.dropout``) is applied only when ``dropout_rng`` is given (training).
    ``enabled`` must be a Python bool (it selects the program). Differentiate with respect to
    ``adapter_params`` only; the base is then a constant of the gradient computation.
    """
    if not enabled or adapter_params is None:
        return model.apply({"params": base_params}, *args, **kwargs)
    _check_paths(base_params, adapter_params)
    rngs = {} if dropout_rng is None else {DROPOUT_RNG: dropout_rng}
    interceptor = _interceptor(settings.scale, settings.dropout, dropout_rng is not None)
    with nn.intercept_methods(interceptor):
        return model.apply({"params": base_params, COLLECTION: adapter_params}, *args, rngs=rngs, **kwargs)


def merge_lora(base_params: dict, adapter_params: dict | None, config: ModelConfig, settings: LoraSettings) -> dict:
    """Base params with ``kernel <- kernel + scale * A B`` at every adapted projection (Flax layout).

    The sum is formed in float32 and stored in the kernel's own dtype; untouched leaves are shared, not
    copied. The result is a plain params tree (``jaxpref.models.save_pretrained`` exports it). ``config``
    is checked against the adapters' shapes.
    """
    if adapter_params is None or not settings.enabled:
        return base_params
    _check_paths(base_params, adapter_params)
    expected = {path: (shape, n_in) for path, _, shape, _, n_in in _targets(config, settings)}
    out = _copy_dicts(base_params)
    for path, ab in _modules(adapter_params):
        kernel = _get(base_params, path)["kernel"]
        a, b = ab["lora_a"], ab["lora_b"]
        if path not in expected or a.shape[:-1] + b.shape[1:] != tuple(kernel.shape):
            raise ValueError(f"adapters at {'/'.join(path)!r} ({a.shape}, {b.shape}) do not fit kernel "
                             f"{tuple(kernel.shape)} for these settings/config.")
        delta = jnp.tensordot(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), axes=1)
        _get(out, path)["kernel"] = (jnp.asarray(kernel, jnp.float32) + settings.scale * delta).astype(kernel.dtype)
    return out


# ---- PEFT format ---------------------------------------------------------------------------------------

_PEFT_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight$")


def _peft_key(path: tuple[str, ...], which: str) -> str:
    layer, parent, name = path
    return f"base_model.model.model.layers.{layer.removeprefix('layers_')}.{parent}.{name}.lora_{which}.weight"


def save_peft_adapter(
    adapter_params: dict,
    config: ModelConfig,
    settings: LoraSettings,
    out_dir: str,
    *,
    base_model_name_or_path: str | None = None,
) -> str:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained``
    loads onto the transformers model of ``config`` (task ``CAUSAL_LM``). Tensors are float32 in PEFT's
    layout: ``lora_A.weight [r, in]``, ``lora_B.weight [out, r]`` (input/output axes flattened in HF's
    order, as :mod:`jaxpref.models.convert` flattens the base kernels). Returns ``out_dir``."""
    from safetensors.numpy import save_file

    if adapter_params is None or not settings.enabled:
        raise ValueError("save_peft_adapter: LoRA is off (rank 0 or no adapters); there is nothing to export.")
    expected = {path: (shape, n_in) for path, _, shape, _, n_in in _targets(config, settings)}
    tensors: dict[str, np.ndarray] = {}
    for path, ab in _modules(adapter_params):
        if path not in expected:
            raise ValueError(f"adapters at {'/'.join(path)!r} are not among settings.target_modules "
                             f"{list(settings.target_modules)} of this config.")
        a = np.asarray(jax.device_get(ab["lora_a"]), np.float32)
        b = np.asarray(jax.device_get(ab["lora_b"]), np.float32)
        r = settings.rank
        tensors[_peft_key(path, "A")] = np.ascontiguousarray(a.reshape(-1, r).T)  # [*in, r] -> [r, in]
        tensors[_peft_key(path, "B")] = np.ascontiguousarray(b.reshape(r, -1).T)  # [r, *out] -> [out, r]
    missing = sorted(set(expected) - {p for p, _ in _modules(adapter_params)})
    if missing:
        raise ValueError(f"adapters lack {'/'.join(missing[0])!r} (and {len(missing) - 1} more) named by the settings.")
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": sorted(settings.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with open(os.path.join(out_dir, ADAPTER_CONFIG), "w") as f:
        json.dump(peft_config, f, indent=2)
    return out_dir


def load_peft_adapter(adapter_dir: str, config: ModelConfig) -> tuple[dict, LoraSettings]:
    """Read a PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``) written for a
    Llama/Mistral model of ``config``: returns ``(adapter_params, settings)`` in jaxpref's layout, float32.

    Raises:
      CheckpointError: a missing file, an adapter type or option jaxpref does not implement (rsLoRA,
        DoRA, biases, per-layer ranks, ``modules_to_save``...), or a tensor that is unknown or does not fit
        ``config`` (named).
    """
    from safetensors.numpy import load_file

    cfg_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    weights_path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    if not os.path.isdir(adapter_dir):
        raise CheckpointError(f"Adapter directory {adapter_dir!r} does not exist; pass a PEFT adapter directory.")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{cfg_path} is missing: {adapter_dir!r} is not a PEFT adapter directory.")
    if not os.path.exists(weights_path):
        hint = " (re-save it with safe_serialization=True)" if os.path.exists(
            os.path.join(adapter_dir, "adapter_model.bin")) else ""
        raise CheckpointError(f"{weights_path} is missing{hint}.")
    with open(cfg_path) as f:
        pc = json.load(f)
    if pc.get("peft_type") != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type {pc.get('peft_type')!r} is not supported; only LORA is.")
    unsupported = [
        ("use_rslora", bool(pc.get("use_rslora"))),
        ("use_dora", bool(pc.get("use_dora"))),
        ("fan_in_fan_out", bool(pc.get("fan_in_fan_out"))),
        ("bias", pc.get("bias", "none") != "none"),
        ("rank_pattern", bool(pc.get("rank_pattern"))),
        ("alpha_pattern", bool(pc.get("alpha_pattern"))),
        ("modules_to_save", bool(pc.get("modules_to_save"))),
        ("layers_to_transform", pc.get("layers_to_transform") is not None),
    ]
    for key, bad in unsupported:
        if bad:
            raise CheckpointError(f"{cfg_path}: {key}={pc.get(key)!r} is not supported by jaxpref's LoRA "
                                  "(plain LoRA on all layers, scale alpha/r, no biases).")

    raw = load_file(weights_path)
    found: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    for key, value in raw.items():
        m = _PEFT_KEY.match(key)
        if m is None or m.group(3) not in TARGETS or TARGETS[m.group(3)][0] != m.group(2) \
                or int(m.group(1)) >= config.num_hidden_layers:
            raise CheckpointError(f"{weights_path}: tensor {key!r} is not a LoRA weight of a "
                                  f"{config.num_hidden_layers}-layer Llama/Mistral projection.")
        found.setdefault((f"layers_{m.group(1)}", m.group(2), m.group(3)), {})[m.group(4)] = value
    names = tuple(n for n in TARGETS if any(p[2] == n for p in found))
    if not names:
        raise CheckpointError(f"{weights_path} holds no LoRA weights.")
    rank = int(pc["r"])
    try:
        settings = LoraSettings(rank=rank, alpha=float(pc["lora_alpha"]), dropout=float(pc.get("lora_dropout", 0.0)),
                                target_modules=names)
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    adapters: dict = {}
    for path, _, shape, _, n_in in _targets(config, settings):
        pair = found.get(path, {})
        a_key, b_key = _peft_key(path, "A"), _peft_key(path, "B")
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{weights_path}: {a_key if 'A' not in pair else b_key!r} is missing "
                                  f"(the adapter covers {list(names)} on every layer).")
        in_size, out_size = math.prod(shape[:n_in]), math.prod(shape[n_in:])
        for key, value, want in ((a_key, pair["A"], (rank, in_size)), (b_key, pair["B"], (out_size, rank))):
            if tuple(value.shape) != want:
                raise CheckpointError(f"{weights_path}: tensor {key!r} has shape {tuple(value.shape)}, expected "
                                      f"{want} for r={rank} and config.json's sizes.")
        a = np.asarray(pair["A"], np.float32).T.reshape(*shape[:n_in], rank)
        b = np.asarray(pair["B"], np.float32).T.reshape(rank, *shape[n_in:])
        _set(adapters, path, {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)})
    return adapters, settings


# ---- small tree helpers --------------------------------------------------------------------------------


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _copy_dicts(tree: Any) -> Any:
    """Copy the dict structure, sharing the leaves."""
    return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _modules(adapter_params: dict) -> list[tuple[tuple[str, ...], dict]]:
    """``(module path, {"lora_a": A, "lora_b": B})`` for every adapted module, in tree order."""
    out = []

    def walk(node, path):
        if isinstance(node, dict) and "lora_a" in node:
            out.append((path, node))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))

    walk(adapter_params, ())
    return out
