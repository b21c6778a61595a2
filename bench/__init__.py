"""hpsearch's benchmarks. Run them all with ``.venv/bin/python -m bench [--smoke] --out DIR``.

Each benchmark is also a module with its own command line (``python -m bench.bench_overhead --help``)
and writes one JSON file into ``--out``. ``bench`` is a package at the repository root so that Ray
workers, which run with the driver's working directory, can import the worker functions defined
here (see :mod:`bench.common`). Results and how to read them: ``docs/benchmarks.md``.
"""
