"""``python -m search ...``: the ``hpsearch`` command, for an environment without the script on PATH."""

from __future__ import annotations

from search.cli import main

if __name__ == "__main__":
    main(prog_name="hpsearch")
