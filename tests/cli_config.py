"""The tiny test configs of tests/helpers.py as a config file, for the command-line tests:

python train.py --config=tests/cli_config.py:pretrain,DATA_DIR --workdir=...
python train.py --config=tests/cli_config.py:sst2,DATA_DIR --workdir=...   # finetune_config
"""

from tests.helpers import finetune_config, small_config


def get_config(arg: str):
  kind, data_dir = arg.split(",", 1)
  if kind == "pretrain":
    return small_config(data_dir)
  return finetune_config(kind, data_dir)
