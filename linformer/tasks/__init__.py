"""Tasks: what the one training loop is given. A task supplies data, model head, loss, metrics."""

from linformer.tasks.base import Task


def get_task(config) -> Task:
  """The task named by `config.task`."""
  from linformer.config import ConfigError

  if config.task == "mlm":
    from linformer.tasks.mlm import MaskedLMTask

    return MaskedLMTask(config)
  if config.task == "clm":
    from linformer.tasks.clm import CausalLMTask

    return CausalLMTask(config)
  if config.task == "finetune":
    from linformer.tasks.finetune import FinetuneTask

    return FinetuneTask(config)
  raise ConfigError(f"config.task={config.task!r}: unknown task. Known: 'mlm', 'clm', 'finetune'.")
