"""Test setup: 8 forced host CPU devices (for the sharding tests) and float32 everywhere.

XLA_FLAGS must be set before JAX initialises its backends, hence at import time of the conftest.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
