"""Grain and TFDS helpers shared by the pretraining and fine-tuning pipelines.

Both pipelines are given one `Batching` (example length, this host's batch size, seed, shard,
grain workers) and cut one global example sequence into per-host batches the same
way (`host_batches`), pad eval splits to the same number of full batches on
every host (`eval_batches_per_host`), may run grain worker processes
(`multiprocess`), read TFDS text features (`decode_text`), check asked
splits against a builder's (`unknown_splits`) and open TFDS builders, preparing
only the project's own (`open_builder`, `ensure_prepared`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from collections.abc import Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from linformer.config import ConfigError

# Builders generated on this machine without network (prepared on first use).
PROJECT_BUILDERS = ("pydocs", "text_files", "listops")
# tfds.testing.mock_data replaces this with a no-op: mocked datasets "prepare" offline.
_DOWNLOAD_AND_PREPARE = tfds.core.DatasetBuilder.__dict__["download_and_prepare"]


def multiprocess(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  """`ds` read by `num_workers` grain worker processes (0: in this process)."""
  if num_workers <= 0:
    return ds
  if not flags.FLAGS.is_parsed():  # Grain workers read absl flags; scripts
    flags.FLAGS.mark_as_parsed()  # and tests may not use absl.app.
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


@dataclasses.dataclass(frozen=True)
class Batching:
  """How one host reads a dataset: what every pipeline (MLM, causal LM, classification) is
  given, whatever its examples."""

  seq_len: int  # tokens per example n, special tokens included
  batch_size: int  # examples per batch on this host
  seed: int  # shuffle (and masking) seed
  shard_index: int | None = None  # this host; None: jax.process_index()
  shard_count: int | None = None  # the number of hosts; None: jax.process_count()
  num_workers: int = 0  # grain worker processes (0: threads in this process)

  @classmethod
  def of_run(cls, config, per_host_batch_size: int) -> Batching:
    """A run's batching on this host: config.model.max_len, config.seed, config.data."""
    return cls(
      seq_len=config.model.max_len,
      batch_size=per_host_batch_size,
      seed=config.seed,
      num_workers=config.data.get("num_workers", 0),
    )

  def resolved(self) -> Batching:
    """With the shard (None: this JAX process of their count) filled in and checked."""
    index, count = self.shard_index, self.shard_count
    if index is None or count is None:
      index, count = jax.process_index(), jax.process_count()
    if not 0 <= index < count:
      raise ValueError(f"shard_index={index} not in [0, {count}).")
    return dataclasses.replace(self, shard_index=index, shard_count=count)


def host_batches(
  ds: grain.MapDataset, batching: Batching, *, drop_remainder: bool
) -> grain.IterDataset:
  """This host's batches of the global example sequence `ds`.

  `ds` is cut into batches of `batching.batch_size` (this host's batch size) and host
  h takes every shard_count-th batch from h on: global batch j is then
  examples [j*B*P, (j+1)*B*P) in order, host h holding rows [h*B, (h+1)*B) of
  it (B = batch_size, P = shard_count), so the data does not depend on P.
  """
  b = batching.resolved()
  ds = ds.batch(b.batch_size, drop_remainder=drop_remainder)
  ds = ds[b.shard_index :: b.shard_count]
  return multiprocess(ds.to_iter_dataset(), b.num_workers)


def eval_batches_per_host(num_examples: int, batch_size: int, shard_count: int) -> int:
  """Full eval batches per host (the last ones padded with fillers)."""
  return max(1, math.ceil(num_examples / (shard_count * batch_size)))


# An HTML / XML tag: `<br />`, `<i>`, `</p>`, `<a href="...">`. Not `a < b > c` (no name after <).
# Attributes are name or name=value pairs, so prose such as "x<y and z>w" is left alone.
_MARKUP = re.compile(
  r"</?[A-Za-z][A-Za-z0-9:-]*"
  r"""(?:\s+[A-Za-z_:][-\w:.]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>]+))?)*\s*/?>"""
)


def strip_markup(text: str) -> str:
  """`text` with each markup tag (IMDB's `<br />`) replaced by a space (config.data.strip_markup):
  the tags would otherwise be word pieces the model learns to predict and to read."""
  return _MARKUP.sub(" ", text)


def decode_text(value) -> str:
  """A TFDS text feature's value (bytes, a 0-d bytes array or str) as `str`."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
    return decode_text(value.item())
  return str(value)


def not_text_fraction(text: str) -> float:
  """The fraction of `text` that is U+FFFD (undecodable bytes) or a control character other
  than whitespace: near 0 for text, large for binary or random data read as text."""
  if not text:
    return 0.0
  bad = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in "\t\n\r\f\v"))
  return bad / len(text)


def split_names(split: str) -> list[str]:
  """The split names of a TFDS split string: 'train[:10%]+test' -> ['train', 'test']."""
  return [part.split("[")[0].strip() for part in split.split("+")]


def unknown_splits(split: str, known: Sequence[str]) -> list[str]:
  """The split names in `split` ('train[:10%]+test') that are not in `known`.

  Empty when `known` is: only mocked builders (tests) have no splits, and
  TFDS then reports a bad split itself.
  """
  return [name for name in split_names(split) if known and name not in known]


class _NoVariantWarnings(logging.Filter):
  """Drops TFDS's 'Variant folder ... has no dataset_info.json' warnings: an unprepared
  dataset is reported by `ensure_prepared`, in one line."""

  def filter(self, record):
    return not str(record.msg).startswith("Variant folder")


@contextlib.contextmanager
def _quiet_tfds():
  quiet = _NoVariantWarnings()
  logger = logging.getLogger("absl")
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def open_builder(tfds_name: str, data_dir: str | None, field: str, **kwargs):
  """`tfds.builder(tfds_name, data_dir=...)`; an unknown name is a ConfigError naming the
  config `field` (e.g. "config.data.dataset='nope'")."""
  try:
    with _quiet_tfds():
      return tfds.builder(tfds_name, data_dir=data_dir, **kwargs)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(
      f"{field}: TFDS has no dataset {tfds_name!r}. Project builders: "
      f"{', '.join(PROJECT_BUILDERS)}; or any TFDS name such as 'lm1b', "
      "'wikipedia/20230601.en', 'c4/en', 'glue/sst2' (see tfds.list_builders())."
    ) from None
  except ValueError as e:
    if "BuilderConfig" not in str(e):
      raise
    builder_cls = tfds.builder_cls(tfds_name.split("/")[0].split(":")[0])
    known = [c.name for c in getattr(builder_cls, "BUILDER_CONFIGS", [])]
    raise ConfigError(f"{field}: no such config of {builder_cls.name!r}; known: {known}.") from None


def ensure_prepared(builder, field: str, data_dir: str | None) -> None:
  """Prepares the project's own builders (generated offline) if needed. Any other dataset must
  already be prepared under `data_dir`: downloading it here could hang for minutes on a machine
  without network, so it is a ConfigError saying how to prepare it elsewhere."""
  with _quiet_tfds():
    prepared = builder.is_prepared()
  if prepared:
    return
  name = builder.info.full_name.rsplit("/", 1)[0]  # e.g. glue/sst2 (without the version)
  mocked = tfds.core.DatasetBuilder.__dict__["download_and_prepare"] is not _DOWNLOAD_AND_PREPARE
  if builder.name not in PROJECT_BUILDERS and not mocked:
    raise ConfigError(
      f"{field}: TFDS dataset {name!r} is not prepared under config.data.data_dir="
      f"{data_dir!r} (looked in {builder.data_dir}), and it is not downloaded during a run. "
      f"Fix: on a machine with network run `tfds build {name} --file_format=array_record "
      "--data_dir=DIR`, copy DIR to this machine and set --config.data.data_dir=DIR."
    )
  builder.download_and_prepare(file_format="array_record")
