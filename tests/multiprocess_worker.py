"""One process of the 2-process jax.distributed CPU test (see test_multihost.py)."""

import json
import os
import sys

process_id, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # 2 devices per process, 4 in all

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_train import tiny_config  # noqa: E402

from helpers import trainer_from_config  # noqa: E402

cfg = tiny_config(num_steps=3)
cfg.mesh.num_devices = 0
cfg.mesh.fsdp = -1
cfg.distributed.coordinator_address = f"127.0.0.1:{port}"
cfg.distributed.num_processes = 2
cfg.distributed.process_id = process_id
cfg.distributed.cpu_collectives = "gloo"
trainer = trainer_from_config(cfg, workdir, progress=False)
assert jax.process_count() == 2 and len(jax.devices()) == 4
out = trainer.fit()
from jaxpref.train.trainer import host_tree  # noqa: E402

params = host_tree(trainer.state.params)
checksum = float(sum(np.abs(x).sum() for x in jax.tree_util.tree_leaves(params)))
trainer.close()
print("RESULT " + json.dumps({"process": jax.process_index(), "loss": out["last_metrics"]["loss"],
                              "step": out["step"], "checksum": checksum}))
