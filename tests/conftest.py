"""Test setup: 8 fake CPU devices so sharding runs everywhere, set before JAX starts."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir shared by the whole session (pydocs is prepared into it once)."""
  return str(tmp_path_factory.mktemp("tfds"))
