"""The loss library must import with nothing but jax (DESIGN principle 1)."""

import subprocess
import sys

BLOCKER = """
import sys
BLOCKED = ("flax", "optax", "orbax", "transformers", "torch", "trl", "datasets", "ml_collections", "tqdm")

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, Block())
from jaxpref.losses import dpo_loss, ropo_loss, bradley_terry_loss, weighted_mean
from jaxpref.logprobs import token_logprobs, chunked_token_logprobs
import jax.numpy as jnp
print(float(dpo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1))[0][0]))
"""


def test_losses_import_with_only_jax():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.strip().splitlines()[-1]) - 0.6931472) < 1e-6
