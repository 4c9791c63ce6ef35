"""``python -m benchmarks``: the benchmark suite (see :mod:`benchmarks.suite`)."""

from .suite import main

raise SystemExit(main())
