"""The package's import graph has no cycle: every module can be read after the ones it imports.

The layers and independence rules themselves are .importlinter's, checked by lint-imports in
scripts/test.sh; this test looks at single modules, below the package level that contract sees.
"""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the test extra)")


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("bertfast", exclude_type_checking_imports=True, cache_dir=None)
    cycles = sorted(
        " -> ".join((module, *back))
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if (back := graph.find_shortest_chain(importer=imported, imported=module))
    )
    assert not cycles, "import cycles (imports under TYPE_CHECKING aside):\n" + "\n".join(cycles)
