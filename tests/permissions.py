"""Running a permission test as root without the capabilities that bypass file modes.

CI runs as root, and root reads and writes a file whatever its mode; a test of an unreadable or
read-only path then runs again in a child pytest under ``setpriv`` with ``CAP_DAC_OVERRIDE`` and
``CAP_DAC_READ_SEARCH`` dropped from the bounding set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def run_without_dac_override(test_id: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the pytest node ``test_id`` in a child process without the DAC-bypass capabilities.

    Skips when not root (the test runs itself then); fails when root has no ``setpriv`` (the case
    could not run, which must not pass silently).
    """
    if os.geteuid() != 0:
        pytest.skip(f"not root: {test_id.rsplit('::', 1)[-1]} runs the case itself")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("root without setpriv (util-linux): the permission case cannot run")
    return subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable, "-m", "pytest", "-q",
         "-p", "no:cacheprovider", test_id],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )
