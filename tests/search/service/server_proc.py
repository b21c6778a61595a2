"""``hpsearch serve`` on in-process backends, for tests that need a real server process to kill.

``python -m tests.search.service.server_proc URL PORT SLOTS`` serves storage URL on 127.0.0.1:PORT
with ``SLOTS`` slots; each study runs on a :class:`~search.LocalBackend` with the cheap
``quadratic`` worker, which sleeps ``FAKE_EPOCH_S`` per epoch (set it so that a kill lands while
trials run). Everything else (queue, scheduler, API, leases, resume) is the real server's.
"""

from __future__ import annotations

import sys

from search import LocalBackend
from search.service import Server, serve
from tests.search.fakes import quadratic


def main(url: str, port: int, slots: int) -> None:
    server = Server(url, slots=slots, backend_factory=lambda spec: LocalBackend(slots), worker_fn=quadratic,
                    poll_s=0.05)
    serve(server, host="127.0.0.1", port=port, on_ready=lambda u: print(f"ready {u}", flush=True))


if __name__ == "__main__":
    from search.cli._common import user_errors

    user_errors(main)(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))  # errors and exit codes as the CLI's
