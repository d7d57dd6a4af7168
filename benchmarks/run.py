"""Run the benchmark suite from a checkout: ``python benchmarks/run.py [--quick] ...``.

The suite lives in the package (bertfast.bench); this only makes the checkout importable.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertfast.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
