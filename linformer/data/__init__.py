"""Pretraining data: TFDS text sources, tokenizers, packing, MLM masking and causal-LM targets.

Importing this package registers the project's TFDS builders `pydocs`,
`text_files` and `listops`. Training calls `build_pretrain_data(config.data, ...)`; see
`pretrain.py` for the `config.data` fields.
"""

from linformer.data import listops  # pylint: disable=unused-import  # Registers.
from linformer.data.mlm import make_mlm_dataset, unigram_perplexity
from linformer.data.pretrain import build_pretrain_data, default_config
from linformer.data.sources import load_text_source
from linformer.data.tokenizer import Tokenizer

__all__ = [
  "Tokenizer",
  "build_pretrain_data",
  "default_config",
  "listops",
  "load_text_source",
  "make_mlm_dataset",
  "unigram_perplexity",
]
