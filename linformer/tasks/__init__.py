"""Tasks: what the one training loop is given. A task supplies data, model head, loss, metrics."""

from linformer.config import ConfigError
from linformer.tasks.base import Task
from linformer.tasks.clm import CausalLMTask
from linformer.tasks.finetune import FinetuneTask
from linformer.tasks.mlm import MaskedLMTask

TASKS = {"mlm": MaskedLMTask, "clm": CausalLMTask, "finetune": FinetuneTask}


def get_task(config) -> Task:
  """The task named by `config.task`."""
  if config.task not in TASKS:
    known = ", ".join(map(repr, TASKS))
    raise ConfigError(f"config.task={config.task!r}: unknown task. Known: {known}.")
  return TASKS[config.task](config)
