"""Grain and TFDS helpers shared by the pretraining and fine-tuning pipelines.

Both pipelines cut one global example sequence into per-host batches the same
way (`host_batches`), pad eval splits to the same number of full batches on
every host (`eval_batches_per_host`), may run grain worker processes
(`multiprocess`), read TFDS text features (`decode_text`) and check asked
splits against a builder's (`unknown_splits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grain
import numpy as np
from absl import flags


def multiprocess(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  """`ds` read by `num_workers` grain worker processes (0: in this process)."""
  if num_workers <= 0:
    return ds
  if not flags.FLAGS.is_parsed():  # Grain workers read absl flags; scripts
    flags.FLAGS.mark_as_parsed()  # and tests may not use absl.app.
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


def resolve_shards(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """(shard_index, shard_count); None -> this JAX process and their count."""
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    shard_index, shard_count = jax.process_index(), jax.process_count()
  return shard_index, shard_count


def host_batches(
  ds: grain.MapDataset,
  batch_size: int,
  *,
  drop_remainder: bool,
  shard_index: int,
  shard_count: int,
  num_workers: int = 0,
) -> grain.IterDataset:
  """This host's batches of the global example sequence `ds`.

  `ds` is cut into batches of `batch_size` (this host's batch size) and host
  h takes every shard_count-th batch from h on: global batch j is then
  examples [j*B*P, (j+1)*B*P) in order, host h holding rows [h*B, (h+1)*B) of
  it (B = batch_size, P = shard_count), so the data does not depend on P.
  """
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds[shard_index::shard_count]
  return multiprocess(ds.to_iter_dataset(), num_workers)


def eval_batches_per_host(num_examples: int, batch_size: int, shard_count: int) -> int:
  """Full eval batches per host (the last ones padded with fillers)."""
  return max(1, math.ceil(num_examples / (shard_count * batch_size)))


def decode_text(value) -> str:
  """A TFDS text feature's value (bytes, a 0-d bytes array or str) as `str`."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
    return decode_text(value.item())
  return str(value)


def unknown_splits(split: str, known: Sequence[str]) -> list[str]:
  """The split names in `split` ('train[:10%]+test') that are not in `known`.

  Empty when `known` is: only mocked builders (tests) have no splits, and
  TFDS then reports a bad split itself.
  """
  asked = [part.split("[")[0].strip() for part in split.split("+")]
  return [name for name in asked if known and name not in known]
