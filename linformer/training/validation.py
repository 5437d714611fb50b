"""One check of a run's whole config and its workdir, before anything is written.

`train_and_evaluate` starts with `check_run` (the workdir, every config field, --until_step),
then, once `config.init_from` is opened, `check_data` (the dataset is known, prepared and text;
fine-tuning has a tokenizer). A bad value is a `ConfigError` whose one-line message names the
field (as written on the command line, `config.optimizer.lr`) or the file, and the fix; nothing
has been written by then, so the corrected command starts cleanly.

Defaults worth knowing: `configs/pretrain.py` gives `optimizer.warmup_steps` as the size's warmup
capped at 10% of `num_train_steps` (it follows `--config.num_train_steps`), so a short run needs
no warmup override; a value set explicitly must fit in the run.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax

from linformer.config import ConfigError, ModelConfig
from linformer.data import classification, encoding, sources
from linformer.data.datasets import FILES, spec_from_config
from linformer.data.pipeline import split_names
from linformer.data.pretrain import tokenizer_training_texts
from linformer.data.tokenizer import Tokenizer, required_pieces
from linformer.training import checkpointing, partitioning
from linformer.training.optimizer import SCHEDULES

TASKS = ("mlm", "clm", "finetune")
PRETRAINING = ("mlm", "clm")  # tasks reading a text corpus into packed blocks
SPECIAL_TOKENS = 5  # <pad> <s> </s> <unk> <mask>: every tokenizer of a run has them
# A SentencePiece vocab_size below this is checked against the corpus's characters up front.
CHECKED_VOCAB_SIZE = 2000
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Workdir:
  """What `check_workdir` found: `latest_step` is the newest checkpoint (None: a fresh run)."""

  path: str
  latest_step: int | None
  has_tokenizer: bool


def check_run(config, workdir: str, until_step: int | None = None) -> Workdir:
  """The workdir, every config field and `until_step`, in that order; reads, writes nothing."""
  state = check_workdir(workdir)
  check_config(config)
  check_until_step(until_step, state, config)
  return state


# The workdir.


def check_workdir(workdir: str) -> Workdir:
  """A workdir that can be created or resumed: not a file, writable, its config.json readable
  (a torn one is fine while there is no checkpoint: it is rewritten)."""

  if not workdir:
    raise ConfigError("--workdir is empty. Fix: give a directory, e.g. --workdir=runs/tiny.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(
      f"--workdir={workdir} is a file, not a directory. Fix: give a new or existing directory."
    )
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(
      f"--workdir={workdir} cannot be created: {parent} is a file. Fix: choose another path."
    )
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(
      f"--workdir={workdir}: {parent} is not writable. Fix: choose a directory you can write to."
    )
  if not os.path.isdir(workdir):
    return Workdir(workdir, None, False)
  checkpointing.read_saved_config(workdir)  # a torn config.json with checkpoints: ConfigError
  tokenizer = os.path.join(workdir, "tokenizer")
  return Workdir(
    workdir,
    checkpointing.latest_step(workdir),
    os.path.isdir(tokenizer) and bool(os.listdir(tokenizer)),
  )


def check_until_step(until_step: int | None, workdir: Workdir, config) -> None:
  """`until_step` must lie beyond the run's newest checkpoint: otherwise nothing would run."""
  if until_step is None:
    return
  if not _is_int(until_step) or until_step < 0:
    raise ConfigError(f"--until_step={until_step!r}: must be a step >= 1.")
  if workdir.latest_step is not None and until_step <= workdir.latest_step:
    raise ConfigError(
      f"--until_step={until_step}: the run in {workdir.path} is already at step "
      f"{workdir.latest_step}, so nothing would run. Fix: give a later step (the schedule ends "
      f"at config.num_train_steps={config.get('num_train_steps')}), or leave --until_step out."
    )


# The config.


def check_config(config) -> None:
  """Every field of a train.py config: task, model, batch and schedule, optimizer, freeze
  phase, intervals, mesh and the data fields. Cheap: no dataset is opened (`check_data`)."""
  task = config.get("task")
  if task not in TASKS:
    raise ConfigError(f"config.task={task!r}: unknown task. Known: 'mlm', 'clm', 'finetune'.")
  if not _is_int(config.get("seed", 0)):
    _fail("seed", config.get("seed"), "must be an integer", "e.g. --config.seed=0")
  _check_causal(config)
  check_model(config)
  _check_steps(config)
  _check_optimizer(config)
  _check_mesh(config)
  if task in PRETRAINING:
    _check_mlm_data(config)
  else:
    _check_finetune_data(config)


def _check_causal(config) -> None:
  """A causal LM needs a causal model, and only a causal LM has one: a masked LM or classifier
  on causal attention would train, but not as the encoder its task means."""
  task, causal = config.get("task"), config.get("model", {}).get("causal", False)
  if task == "clm" and causal is not True:
    _fail(
      "model.causal",
      causal,
      "config.task='clm' predicts the next token, so a token must not see later ones",
      "set --config.model.causal=True with a config.model.segment_len for the Linformer "
      "(configs/clm.py does both)",
    )
  if task != "clm" and causal is not False:
    _fail(
      "model.causal",
      causal,
      f"config.task={task!r} needs a bidirectional encoder; causal attention is for "
      "config.task='clm'",
      "set --config.model.causal=False, or train a causal LM with configs/clm.py",
    )


def check_model(config) -> ModelConfig:
  """config.model as the `ModelConfig` it builds (the vocabulary size comes later, from the
  tokenizer, unless a warm start fixed it)."""
  try:
    cfg = ModelConfig.from_dict(config.model.to_dict())
  except TypeError as e:
    raise ConfigError(f"config.model: {e}.") from None
  if cfg.max_len < 3:
    _fail("model.max_len", cfg.max_len, "leaves no room for text beside <s> and </s>", "use >= 3")
  if not _is_number(cfg.layer_norm_eps) or cfg.layer_norm_eps <= 0:
    _fail("model.layer_norm_eps", cfg.layer_norm_eps, "must be > 0", "e.g. 1e-5")
  return cfg


def _check_steps(config) -> None:
  batch = _integer(config, "batch_size", 1, "e.g. --config.batch_size=32")
  accum = _integer(config, "grad_accum_steps", 1, "1 for no accumulation")
  if batch % accum:
    _fail(
      "grad_accum_steps",
      accum,
      f"does not divide config.batch_size={batch} into equal micro-batches",
      "use a divisor of the batch size",
    )
  steps = config.get("num_train_steps")
  if steps == -1:
    epochs = config.get("num_epochs")
    if not _is_number(epochs) or epochs <= 0:
      raise ConfigError(
        f"config.num_train_steps=-1 trains for config.num_epochs, but num_epochs={epochs!r}. "
        "Fix: set --config.num_epochs > 0 (fine-tuning), or --config.num_train_steps >= 1."
      )
  elif not _is_int(steps) or steps < 1:
    _fail(
      "num_train_steps",
      steps,
      "must be >= 1 (or -1: config.num_epochs over the train split, for fine-tuning)",
      "e.g. --config.num_train_steps=1000",
    )
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    _integer(config, field, 1, f"e.g. --config.{field}=100")
  evals = config.get("num_eval_steps", -1)
  if evals != -1:
    _integer(config, "num_eval_steps", 1, "-1 for the whole split, or a number of batches >= 1")
  _integer(config, "max_checkpoints_to_keep", 1, "e.g. 3")
  freeze = config.get("freeze_pretrained_steps") or 0
  if freeze:
    _integer(config, "freeze_pretrained_steps", 0, "0 for no freeze phase")
    if steps != -1 and freeze > steps:
      _fail(
        "freeze_pretrained_steps",
        freeze,
        f"longer than config.num_train_steps={steps} (equal: the imported weights never train, "
        "e.g. to fit an MLM head)",
        f"use at most {steps} (e.g. {max(steps // 10, 1)})",
      )
  _check_teacher(config, steps, freeze)
  for field in ("freeze_lr", "peak_flops"):
    value = config.get(field)
    if value is not None and (not _is_number(value) or value <= 0):
      _fail(field, value, "must be > 0", "or None for the default")


def _check_teacher(config, steps, freeze: int) -> None:
  """Attention transfer (config.transfer_steps) and distillation (config.distill): a frozen
  full-attention teacher built from config.init_from (tasks/distill.py)."""
  transfer = _integer(config, "transfer_steps", 0, "0 for no attention transfer") or 0
  if transfer and steps != -1 and transfer + freeze > steps:
    _fail(
      "transfer_steps",
      transfer,
      f"with freeze_pretrained_steps={freeze} longer than config.num_train_steps={steps}",
      f"use at most {steps - freeze} transfer steps",
    )
  value = config.get("transfer_lr")
  if value is not None:
    _positive(value, "transfer_lr", "e.g. 1e-3, or None for optimizer.lr")
  distill = config.get("distill") or {}
  for field in ("alpha", "beta"):
    _at_least_zero(distill.get(field, 0.0), f"distill.{field}", "0 switches the term off")
  if "temperature" in distill:
    _positive(distill.get("temperature"), "distill.temperature", "e.g. 1.0 or 2.0")
  distilling = bool(distill.get("alpha") or distill.get("beta"))
  if not (transfer or distilling):
    return
  what = "transfer_steps" if transfer else "distill.alpha / distill.beta"
  if config.get("task") != "mlm":
    _fail(
      what.split(" ")[0],
      transfer or distill.get("alpha"),
      f"the teacher is a masked LM, but config.task={config.get('task')!r}",
      "uptrain with configs/uptrain.py (task=mlm), then fine-tune the result",
    )
  if not config.get("init_from"):
    raise ConfigError(
      f"config.{what.split(' ')[0]}: the teacher is config.init_from run with full attention, but "
      "init_from is empty. Fix: set --config.init_from to a HuggingFace directory or a run's "
      "workdir."
    )
  model = config.get("model") or {}
  if transfer and (
    model.get("attention") != "linformer"
    or model.get("projection") not in ("learned", "conv")
    or model.get("causal")
  ):
    _fail(
      "transfer_steps",
      transfer,
      "attention transfer trains Linformer's E and F, but config.model has "
      f"attention={model.get('attention')!r}, projection={model.get('projection')!r}, "
      f"causal={model.get('causal')!r}",
      "use attention='linformer' with projection='learned' or 'conv' (not causal), or "
      "transfer_steps=0",
    )


def _check_optimizer(config) -> None:

  opt = config.get("optimizer")
  if opt is None:
    raise ConfigError("config.optimizer is missing. Fix: start from a file in configs/.")
  _positive(opt.get("lr"), "optimizer.lr", "e.g. 1e-3")
  _at_least_zero(opt.get("end_lr", 0.0), "optimizer.end_lr", "0 decays to zero")
  if opt.get("schedule") not in SCHEDULES:
    _fail("optimizer.schedule", opt.get("schedule"), "unknown schedule", f"use one of {SCHEDULES}")
  for field in ("b1", "b2"):
    value = opt.get(field)
    if not _is_number(value) or not 0 <= value < 1:
      _fail(f"optimizer.{field}", value, "must be in [0, 1)", "RoBERTa uses b1=0.9, b2=0.98")
  _positive(opt.get("eps"), "optimizer.eps", "e.g. 1e-6")
  _at_least_zero(opt.get("weight_decay", 0.0), "optimizer.weight_decay", "e.g. 0.01, 0 for none")
  if opt.get("grad_clip_norm") is not None:
    _at_least_zero(opt.get("grad_clip_norm"), "optimizer.grad_clip_norm", "0 for no clipping")
  fraction = opt.get("warmup_fraction") or 0.0
  if not _is_number(fraction) or not 0 <= fraction < 1:
    _fail("optimizer.warmup_fraction", fraction, "must be in [0, 1)", "e.g. 0.06")
  warmup = opt.get("warmup_steps")
  if not _is_int(warmup) or warmup < 0:
    _fail("optimizer.warmup_steps", warmup, "must be an integer >= 0", "e.g. 10% of the steps")
  steps = config.get("num_train_steps")
  before = {f: config.get(f) or 0 for f in ("transfer_steps", "freeze_pretrained_steps")}
  schedule_steps = steps - sum(before.values())  # the warmup starts when these phases end
  if steps != -1 and not fraction and warmup > schedule_steps and schedule_steps > 0:
    after_freeze = "".join(f" minus {f}={v}" for f, v in before.items() if v)
    _fail(
      "optimizer.warmup_steps",
      warmup,
      f"longer than the run's {schedule_steps} steps (config.num_train_steps={steps}"
      f"{after_freeze})",
      f"set --config.optimizer.warmup_steps to at most {schedule_steps}, e.g. "
      f"{min(schedule_steps, max(schedule_steps // 10, 1))} (10%)",
    )


def _check_mesh(config) -> None:

  mesh_config = config.get("mesh")
  if mesh_config is None:
    raise ConfigError("config.mesh is missing. Fix: e.g. config.mesh = dict(data=-1).")
  partitioning.check_rules(mesh_config.get("rules"))
  mesh = partitioning.make_mesh(mesh_config)
  dp, accum = partitioning.data_parallel_size(mesh), config.grad_accum_steps
  if config.batch_size % (accum * dp):
    raise ConfigError(
      f"config.batch_size={config.batch_size} must be divisible by grad_accum_steps={accum} "
      f"times the data-parallel size {dp} (mesh data x fsdp = "
      f"{mesh.shape['data']} x {mesh.shape['fsdp']}). Fix: use a batch size that is a "
      f"multiple of {accum * dp}."
    )
  if config.batch_size % jax.process_count():
    raise ConfigError(
      f"config.batch_size={config.batch_size} must be divisible by the number of processes "
      f"{jax.process_count()}."
    )


def _check_mlm_data(config) -> None:
  d = config.data
  for field in ("dataset", "field", "train_split", "eval_split"):
    value = d.get(field)
    if not isinstance(value, str) or not value.strip():
      _fail(f"data.{field}", value, "must be a non-empty string", "see linformer/data/pretrain.py")
  vocab = d.get("vocab_size")
  if not _is_int(vocab) or vocab <= SPECIAL_TOKENS:
    _fail(
      "data.vocab_size",
      vocab,
      f"too small for the {SPECIAL_TOKENS} special tokens (<pad> <s> </s> <unk> <mask>) and "
      "the corpus's characters",
      "use e.g. 8000 (the default)",
    )
  _integer(config, "data.tokenizer_max_sentences", 1, "e.g. 1000000")
  if d.get("max_predictions") is not None:
    _integer(config, "data.max_predictions", 1, "or None for ceil(mask_prob * max_len)")
  mask_prob = d.get("mask_prob")
  if not _is_number(mask_prob) or not 0 < mask_prob < 1:
    _fail("data.mask_prob", mask_prob, "must be in (0, 1)", "RoBERTa masks 0.15")
  _check_common_data(config)


def _check_finetune_data(config) -> None:

  d = config.data
  spec = spec_from_config(d)  # an unknown dataset: ConfigError listing the known ones
  if d.get("truncation", "auto") != "auto" and d.get("truncation") not in encoding.TRUNCATIONS:
    _fail(
      "data.truncation",
      d.get("truncation"),
      "unknown truncation",
      f"use one of {encoding.TRUNCATIONS} or 'auto' ({spec.default_truncation} for {spec.name})",
    )
  if d.get("pair_template", "auto") not in encoding.PAIR_TEMPLATES:
    _fail(
      "data.pair_template",
      d.get("pair_template"),
      "unknown template",
      f"use one of {encoding.PAIR_TEMPLATES}",
    )
  _integer(config, "data.head_tokens", 0, "e.g. 128")
  encoding.length_buckets(d.get("length_buckets", "none"), config.model.max_len)
  _check_files_fields(config, spec)
  _check_common_data(config)


def _check_files_fields(config, spec) -> None:
  """config.data.files names splits the run reads; dataset=files says what its columns are."""

  d = config.data
  files = d.get("files") or {}
  reads = {name for split in classification.read_splits(spec) for name in split_names(split)}
  for key in files:
    if files[key] and key not in reads:
      _fail(
        f"data.files.{key}",
        files[key],
        f"{spec.name} does not read a split {key!r} (it reads {', '.join(sorted(reads))})",
        "set the file of one of those splits, or leave this one out",
      )
  for field in ("train_examples", "eval_examples", "subset_seed"):
    _integer(config, f"data.{field}", 0, "0 uses every example" if field != "subset_seed" else "0")
  if spec.name != FILES:
    return
  if not files.get("train"):
    _fail("data.files.train", files.get("train"), "dataset='files' trains on a file", "give one")
  if not (files.get("validation") or files.get("test")):
    _fail(
      "data.files.validation",
      files.get("validation"),
      "dataset='files' is evaluated on a file",
      "give config.data.files.validation (or .test)",
    )
  fields = d.get("text_fields")
  if (
    isinstance(fields, str)
    or not isinstance(fields, (tuple, list))
    or len(fields) not in (1, 2)
    or not all(isinstance(f, str) and f.strip() for f in fields)
  ):
    _fail("data.text_fields", fields, "give one or two column names", "e.g. \"('sentence',)\"")
  if not isinstance(d.get("label_field"), str) or not d.label_field.strip():
    _fail("data.label_field", d.get("label_field"), "must be a column name", "e.g. label")
  if d.label_field in fields:
    _fail("data.label_field", d.label_field, "is also a text field", "name the label column")
  names = d.get("label_names") or ()
  if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
    _fail("data.label_names", names, "give a tuple of class names", "e.g. \"('neg', 'pos')\"")
  if len(set(names)) != len(names):
    _fail("data.label_names", names, "has a repeated name", "give each class once")
  num = d.get("num_labels")
  if num is not None:
    if not _is_int(num) or num < 1:
      _fail("data.num_labels", num, "must be 1 (regression) or the number of classes", "or None")
    if num == 1 and names:
      _fail("data.num_labels", num, "a regression has no label_names", "leave label_names out")
    if num > 1 and names and num != len(names):
      _fail("data.num_labels", num, f"label_names has {len(names)} names", "leave it out (None)")
    if num > 1 and not names:
      _fail(
        "data.num_labels",
        num,
        "classes need their names (or labels read from the train file)",
        "leave num_labels out, or give label_names",
      )
  if len(names) == 1:
    _fail("data.label_names", names, "one class cannot be learnt", "give two or more")


def _check_common_data(config) -> None:
  d = config.data
  _integer(config, "data.num_workers", 0, "0 reads in this process")
  for field in ("data_dir", "cache_dir"):
    path = d.get(field)
    if path and os.path.exists(path) and not os.path.isdir(path):
      _fail(f"data.{field}", path, "is a file, not a directory", "give a directory")
  if d.get("tokenizer"):
    _load_tokenizer(d.tokenizer)


def _load_tokenizer(path: str):

  if not os.path.exists(path):
    _fail(
      "data.tokenizer",
      path,
      "no such file or directory",
      "give a tokenizer.json, a SentencePiece .model or a run's tokenizer/ directory, or ''",
    )
  try:
    return Tokenizer.load(path)
  except (ValueError, OSError) as e:  # not a tokenizer, or one without the special tokens
    raise ConfigError(f"config.data.tokenizer={path!r}: cannot be used ({e})") from None


# The data.


def check_data(config, workdir: Workdir, has_source: bool = False):
  """The dataset is known and prepared (the project's builders are prepared here, into
  config.data.data_dir), its splits and features exist, a pretraining corpus is text, and a
  fine-tuning run has a tokenizer; fine-tuning files are read whole. `has_source`:
  config.init_from gives weights and tokenizer. Returns the config with what the data decides
  (dataset=files's labels, when read from its train file) and its data paths absolute."""
  config = checkpointing.absolute_data_paths(config)
  d = config.data
  if config.task in PRETRAINING:
    try:
      files = sources.text_files_config_from(d)
    except (ValueError, TypeError) as e:
      raise ConfigError(str(e)) from None
    what = f"config.data.dataset={d.dataset!r}"
    common = dict(field=d.field, data_dir=d.get("data_dir"), config=files)
    train = sources.load_text_source(d.dataset, d.train_split, **common)
    sources.load_text_source(d.dataset, d.eval_split, **common)
    sources.check_is_text(train, what)
    trains_tokenizer = not (has_source or d.get("tokenizer") or workdir.has_tokenizer)
    if trains_tokenizer and d.vocab_size < CHECKED_VOCAB_SIZE:
      _check_vocab_size(d, train)
    return config

  data = classification.complete_files_config(d)
  discovered = data is not d
  if discovered:
    config = config.copy_and_resolve_references()
    config.data = data
    d = config.data
  spec = spec_from_config(d)
  if not (has_source or d.get("tokenizer") or spec.name == "listops" or workdir.has_tokenizer):
    raise ConfigError(
      "Fine-tuning needs a tokenizer: set config.init_from to a pretraining workdir (its "
      "tokenizer and weights are used), or config.data.tokenizer to a tokenizer.json to "
      "train from scratch."
    )
  classification.check_dataset(
    spec,
    d.get("data_dir"),
    d.get("files"),
    train_examples=d.get("train_examples", 0),
    eval_examples=d.get("eval_examples", 0),
  )
  if discovered and _process_index() == 0:
    print(
      f"Labels read from {d.files[split_names(spec.train_split)[0]]}: "
      + ", ".join(f"{i} = {name}" for i, name in enumerate(spec.label_names))
      + " (config.data.label_names)."
    )
  return config


def _check_vocab_size(d, train) -> None:
  """A SentencePiece vocabulary too small for the corpus's characters fails only after minutes
  of reading on a large corpus: counted here (on at most 200k sentences) before anything is
  written. Only small vocabularies (< CHECKED_VOCAB_SIZE) can be too small in practice."""

  needed = required_pieces(tokenizer_training_texts(train), min(d.tokenizer_max_sentences, 200_000))
  if d.vocab_size < needed:
    _fail(
      "data.vocab_size",
      d.vocab_size,
      f"too small for this corpus, whose characters and {SPECIAL_TOKENS} special tokens need "
      f"{needed} pieces",
      f"set --config.data.vocab_size to at least {needed} (8000 is the default)",
    )


def eval_split_names(config) -> list[str]:
  """The splits `eval.py --split` may name for a run of `config`."""
  if config.get("task") in PRETRAINING:
    return ["validation", "train"]

  return spec_from_config(config.data).eval_split_names


# Helpers.


def _process_index() -> int:

  return jax.process_index()


def _fail(field: str, value, problem: str, fix: str):
  raise ConfigError(f"config.{field}={value!r}: {problem}. Fix: {fix}.")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value.get(part, _MISSING) if hasattr(value, "get") else _MISSING
  return value


def _integer(config, field: str, minimum: int, fix: str):
  """config.<field> as an int >= minimum; a field the config does not have is not checked."""
  value = _get(config, field)
  if value is _MISSING:
    return None
  if not _is_int(value) or value < minimum:
    _fail(field, value, f"must be an integer >= {minimum}", fix)
  return value


def _positive(value, field: str, fix: str) -> None:
  if not _is_number(value) or value <= 0:
    _fail(field, value, "must be > 0", fix)


def _at_least_zero(value, field: str, fix: str) -> None:
  if not _is_number(value) or value < 0:
    _fail(field, value, "must be >= 0", fix)
