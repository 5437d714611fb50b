"""The paper's Table 3 (whole-model inference, Linformer vs Transformer); see
linformer/analysis/efficiency.py for what is measured and how.

    python benchmarks/table3.py                   # CPU preset (n <= 4096, k <= 1024, 2 layers)
    python benchmarks/table3.py --preset gpu      # the paper's whole table on an accelerator
    python benchmarks/table3.py --help
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from linformer.analysis.efficiency import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
