"""One `Tokenizer` interface over SentencePiece models and HF tokenizer.json.

Pretraining needs five special tokens: pad, bos (= BERT's [CLS], RoBERTa's
<s>), eos (= [SEP], </s>), unk and mask. A run without a tokenizer trains a
SentencePiece model on its training text (`train_sentencepiece`, with
<pad>=0, <s>=1, </s>=2, <unk>=3, <mask>=4); a run can instead bring any
HuggingFace `tokenizer.json` (RoBERTa BPE, BERT WordPiece, ...).

A run saves its tokenizer in `{workdir}/tokenizer/` (`save`) so resuming,
fine-tuning and evaluation reload exactly the same vocabulary (`load`).
"""

from __future__ import annotations

import collections
import io
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence

import sentencepiece as spm
import tokenizers

from linformer.config import ConfigError

SENTENCEPIECE_FILE = "sentencepiece.model"
TOKENIZER_JSON = "tokenizer.json"

# Accepted spellings of each special token in a tokenizer.json.
_SPECIAL_NAMES = {
  "pad": ("<pad>", "[PAD]"),
  "bos": ("<s>", "[CLS]", "<cls>", "[BOS]"),
  "eos": ("</s>", "[SEP]", "<sep>", "[EOS]"),
  "unk": ("<unk>", "[UNK]"),
  "mask": ("<mask>", "[MASK]"),
}


class Tokenizer:
  """Text <-> ids with the special ids that MLM pretraining needs.

  Attributes:
    pad_id, bos_id, eos_id, unk_id, mask_id: special ids; bos doubles as
      BERT's [CLS] and eos as [SEP].
    vocab_size: number of ids (embedding rows needed).
    special_ids: sorted ids of all control tokens; never masked or used as
      random replacements.
  """

  def __init__(
    self,
    *,
    sentencepiece_model: bytes | None = None,
    tokenizer_json: str | None = None,
    source: str = "",
  ):
    if (sentencepiece_model is None) == (tokenizer_json is None):
      raise ValueError("Give exactly one of sentencepiece_model or tokenizer_json.")
    self._sp_model = sentencepiece_model
    self._json = tokenizer_json
    self.source = source  # For messages only.
    if sentencepiece_model is not None:
      self._sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model)
      ids = {
        "pad": self._sp.pad_id(),
        "bos": self._sp.bos_id(),
        "eos": self._sp.eos_id(),
        "unk": self._sp.unk_id(),
        "mask": self._sp.piece_to_id("<mask>"),
      }
      if ids["mask"] == ids["unk"]:
        ids["mask"] = -1
      self.vocab_size = self._sp.get_piece_size()
      specials = [
        i for i in range(self.vocab_size) if self._sp.is_control(i) or self._sp.is_unknown(i)
      ]
    else:
      self._hf = tokenizers.Tokenizer.from_str(tokenizer_json)
      # Files saved for inference often pad/truncate (e.g. to 128): packing
      # needs every token of a document.
      self._hf.no_padding()
      self._hf.no_truncation()
      # Text that contains "[MASK]" or "<s>" must stay text, not control ids.
      self._hf.encode_special_tokens = True
      ids = {
        role: next(
          (self._hf.token_to_id(n) for n in names if self._hf.token_to_id(n) is not None), -1
        )
        for role, names in _SPECIAL_NAMES.items()
      }
      self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
      specials = [i for i, t in self._hf.get_added_tokens_decoder().items() if t.special]
    missing = [f"{role} (one of {_SPECIAL_NAMES[role]})" for role, i in ids.items() if i < 0]
    if missing:
      raise ConfigError(
        f"Tokenizer {source or '(in memory)'} lacks special tokens needed for"
        f" MLM pretraining: {', '.join(missing)}. Add them to the tokenizer "
        "(e.g. tokenizer.add_special_tokens(['<mask>'])) or set "
        "config.data.tokenizer='' to train a SentencePiece model."
      )
    self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
    self.unk_id, self.mask_id = ids["unk"], ids["mask"]
    self.special_ids = tuple(sorted(set(specials) | set(ids.values())))

  # Encoding.

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, without special tokens."""
    if self._sp_model is not None:
      return self._sp.encode(text)
    return self._hf.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of many texts, in parallel inside the library."""
    if self._sp_model is not None:
      return self._sp.encode(list(texts))
    return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

  def encode_pair(
    self, text_a: str, text_b: str | None = None, max_length: int | None = None
  ) -> list[int]:
    """`[bos] a [eos]` or `[bos] a [eos] b [eos]`, longest-first truncated."""
    a, b = self.encode(text_a), self.encode(text_b) if text_b else None
    budget = None if max_length is None else max_length - (3 if b else 2)
    if budget is not None:
      while len(a) + len(b or []) > max(budget, 0):
        if b and len(b) > len(a):
          b.pop()
        else:
          a.pop()
    ids = [self.bos_id, *a, self.eos_id]
    return ids + [*b, self.eos_id] if b else ids

  def id_to_token(self, i: int) -> str:
    """The vocabulary entry of one id (e.g. '[MASK]', '##ing', '▁the')."""
    if self._sp_model is not None:
      return self._sp.id_to_piece(int(i))
    return self._hf.id_to_token(int(i))

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids if int(i) not in self.special_ids]
    if self._sp_model is not None:
      return self._sp.decode(ids)
    return self._hf.decode(ids)

  # Persistence.

  @property
  def fingerprint_bytes(self) -> bytes:
    """The serialized model: identical bytes mean identical ids."""
    return self._sp_model if self._sp_model is not None else self._json.encode()

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    name = SENTENCEPIECE_FILE if self._sp_model is not None else TOKENIZER_JSON
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "wb") as f:
      f.write(self.fingerprint_bytes)
    os.replace(tmp, os.path.join(directory, name))

  @classmethod
  def load(cls, path: str) -> Tokenizer:
    """From a saved directory, a tokenizer.json or a SentencePiece .model."""
    if os.path.isdir(path):
      for name in (SENTENCEPIECE_FILE, TOKENIZER_JSON):
        if os.path.exists(os.path.join(path, name)):
          return cls.load(os.path.join(path, name))
      raise FileNotFoundError(
        f"config.data.tokenizer={path!r}: directory has neither "
        f"{SENTENCEPIECE_FILE} nor {TOKENIZER_JSON}."
      )
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"config.data.tokenizer={path!r}: no such file. Give a tokenizer.json"
        ", a SentencePiece .model, a saved tokenizer directory, or '' to "
        "train one."
      )
    with open(path, "rb") as f:
      data = f.read()
    if path.endswith(".json"):
      return cls(tokenizer_json=data.decode("utf-8"), source=path)
    return cls(sentencepiece_model=data, source=path)

  def __getstate__(self):  # Picklable for grain worker processes.
    return {
      "sentencepiece_model": self._sp_model,
      "tokenizer_json": self._json,
      "source": self.source,
    }

  def __setstate__(self, state):
    self.__init__(**state)

  def __repr__(self):
    kind = "SentencePiece" if self._sp_model is not None else "tokenizer.json"
    return (
      f"Tokenizer({kind}, vocab_size={self.vocab_size}, pad={self.pad_id}"
      f", bos={self.bos_id}, eos={self.eos_id}, unk={self.unk_id}, "
      f"mask={self.mask_id}, source={self.source!r})"
    )


def _training_sentences(texts: Iterable[str], max_sentences: int, max_sentence_chars: int):
  """Non-empty lines of the documents, at most `max_sentences` of them."""
  count = 0
  for text in texts:
    for line in text.splitlines():
      line = line.strip()[:max_sentence_chars]
      if line:
        yield line
        count += 1
        if count >= max_sentences:
          return


def required_pieces(
  texts: Iterable[str], max_sentences: int = 1_000_000, character_coverage: float = 0.9995
) -> int:
  """The smallest vocab_size `train_sentencepiece` accepts for `texts`: the characters covering
  `character_coverage` of the (NFKC-normalised) text, each a piece, and the 5 special tokens,
  counted as SentencePiece counts them (it refuses a smaller vocabulary)."""
  counts = collections.Counter()
  for line in _training_sentences(texts, max_sentences, 4096):
    line = " ".join(unicodedata.normalize("NFKC", line).split())
    counts.update("\u2581" + line.replace(" ", "\u2581"))  # SentencePiece's whitespace piece
  total, covered, chars = sum(counts.values()), 0, 0
  for _, count in counts.most_common():
    if covered >= character_coverage * total:
      break
    covered += count
    chars += 1
  return chars + len(_SPECIAL_NAMES)


def train_sentencepiece(
  texts: Iterable[str],
  vocab_size: int,
  *,
  max_sentences: int = 1_000_000,
  model_type: str = "unigram",
  character_coverage: float = 0.9995,
  num_threads: int | None = None,
) -> Tokenizer:
  """Trains SentencePiece on lines of `texts` (documents split into lines).

  `vocab_size` is a soft limit (small corpora give fewer pieces); read the
  result's `vocab_size`. Only the first `max_sentences` lines are read, so
  pass the documents in a random order for a representative sample.
  """
  model = io.BytesIO()
  try:
    _train(texts, model, vocab_size, max_sentences, model_type, character_coverage, num_threads)
  except RuntimeError as e:
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
    if needed is None:
      raise
    raise ConfigError(
      f"config.data.vocab_size={vocab_size}: too small for this corpus, whose characters and "
      f"{len(_SPECIAL_NAMES)} special tokens need {needed.group(1)} pieces. Fix: set "
      f"--config.data.vocab_size to at least {needed.group(1)} (8000 is the default)."
    ) from None
  return Tokenizer(sentencepiece_model=model.getvalue(), source="trained SentencePiece")


def _train(texts, model, vocab_size, max_sentences, model_type, character_coverage, num_threads):
  spm.SentencePieceTrainer.train(
    sentence_iterator=_training_sentences(texts, max_sentences, 4096),
    model_writer=model,
    vocab_size=vocab_size,
    hard_vocab_limit=False,
    model_type=model_type,
    character_coverage=character_coverage,
    max_sentence_length=16384,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    pad_piece="<pad>",
    bos_piece="<s>",
    eos_piece="</s>",
    unk_piece="<unk>",
    control_symbols=["<mask>"],
    num_threads=num_threads or os.cpu_count() or 1,
    minloglevel=2,
  )
