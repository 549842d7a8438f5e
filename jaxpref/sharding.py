"""Device mesh, the one table of logical -> mesh axis rules, and helpers to place params and batches.

The mesh has three axes (MaxText/EasyLM convention):

* ``data``: pure data parallelism (params replicated),
* ``fsdp``: data parallelism with params, gradients and optimizer state sharded (ZeRO-3 style),
* ``tensor``: tensor (model) parallelism over heads, MLP width and vocabulary.

Models name their axes logically (``embed``, ``heads``, ``mlp`` ...); :data:`LOGICAL_AXIS_RULES` alone
decides where each goes. The same code runs on 1 CPU device, 8 forced host devices, a GPU node or a
multi-host TPU pod; only the mesh shape changes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

#: logical axis name -> mesh axis (or axes, or None = replicated). Params first, then activations.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("lora_rank", None),  # LoRA adapters: A [in..., rank], B [rank, out...] split like their base kernel
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over all (global) devices; one size may be ``-1`` = the rest.

    Raises ``ValueError`` naming the sizes when they do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes data={data}, fsdp={fsdp}, tensor={tensor}: at most one may be -1.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes) or n % known:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} does not divide the {n} available devices; "
            "choose sizes whose product is the device count (use -1 for one axis to take the rest)."
        )
    sizes = [n // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != n:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {int(np.prod(sizes))} devices, "
            f"but {n} are available; the product must equal the device count."
        )
    from jax.experimental import mesh_utils

    try:
        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # e.g. CPU devices without topology information
        grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """Map a pytree of logical ``PartitionSpec``s to ``NamedSharding``s on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batches are split along their leading axis over ``data`` and ``fsdp``."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Context in which the models' ``nn.with_logical_constraint`` calls take effect on ``mesh``."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        yield
