"""``python -m bertfast.bench``: the benchmark suite without the main CLI."""

import sys

from bertfast.bench.cli import main

sys.exit(main())
