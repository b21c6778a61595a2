"""What the driver imports: a run checks its study file and data before torch is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_run_api_does_not_import_torch() -> None:
    """Before, search.backends._worker imported TrialOutOfMemory at the top, which loaded torch (about
    5 s here) before a missing data file could be reported."""
    code = "import sys, search._api; print(sorted(m for m in ('torch', 'trials._trial') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
