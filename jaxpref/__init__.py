"""jaxpref: preference training of LLMs in JAX/Flax (DPO family, ROPO, reward-conditioned DPO, APO).

Importing ``jaxpref`` is cheap and needs only ``jax``: the loss library (``jaxpref.losses``) and the
log-prob helpers (``jaxpref.logprobs``) depend on nothing else. Models, data, training and algorithms
live in subpackages that import Flax, optax, transformers etc. when they are imported themselves.
"""

__version__ = "0.1.0"
