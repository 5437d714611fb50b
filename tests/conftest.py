"""Test setup: 8 fake CPU devices so sharding runs everywhere, set before JAX starts, and one
JAX compilation cache for the session."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests build the same tiny models and steps, in this process and in the train.py / eval.py
# processes they start (which inherit the environment): a persistent compilation cache lets each
# compile once per session. A fresh directory per session, removed at exit: nothing outside the
# session (a user's own JAX_COMPILATION_CACHE_DIR included) is read or written. A cached
# executable is the one XLA compiled, so results are bit-identical with or without it.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="linformer-tests-jax-cache-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


import pytest  # noqa: E402

from tests.helpers import random_bert_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir shared by the whole session (pydocs is prepared into it once)."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def pydocs_tokenizer(data_dir, tmp_path_factory):
  """The tokenizer a `small_config` run trains for itself (SentencePiece on pydocs with
  config.data's vocabulary and sentence budget), trained once: end-to-end tests about something
  else pass it as config.data.tokenizer and skip seconds of training per run. Runs that train
  their own still exist (tests/test_training.py's reference run, the two-process run)."""
  from linformer.data import sources
  from linformer.data.pretrain import tokenizer_training_texts
  from linformer.data.tokenizer import train_sentencepiece
  from tests.helpers import small_config

  config = small_config(data_dir).data
  texts = sources.load_text_source(config.dataset, config.train_split, config.field, data_dir)
  tokenizer = train_sentencepiece(
    tokenizer_training_texts(texts), config.vocab_size, max_sentences=config.tokenizer_max_sentences
  )
  path = str(tmp_path_factory.mktemp("pydocs_tokenizer"))
  tokenizer.save(path)
  return path


@pytest.fixture(scope="session")
def hf_dir(data_dir, tmp_path_factory):
  """A random 2-layer, 32-position BERT with MLM head in HuggingFace format (tests/helpers.py)."""
  return random_bert_dir(data_dir, tmp_path_factory.mktemp("hf"))
