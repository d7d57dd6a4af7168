"""The benchmark suite: bertfast against Hugging Face transformers, end to end and per kernel.

``run_suite(make_settings(...), output_dir)`` measures and writes results.json, results.md and
plots; ``plot_results(results_json)`` redraws the plots from a file. The command line is
``bertfast bench`` (``bertfast.bench.cli.register`` adds it to the main CLI).
"""

from bertfast.bench.plan import make_settings
from bertfast.bench.report import load_results, plot_results, render_markdown
from bertfast.bench.settings import BenchSettings, Case
from bertfast.bench.suite import run_suite

__all__ = [
    "BenchSettings",
    "Case",
    "load_results",
    "make_settings",
    "plot_results",
    "render_markdown",
    "run_suite",
]
