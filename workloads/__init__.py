"""Workloads for benchmarking raft_actors clusters.

- :mod:`workloads.keys`: key distributions (:func:`uniform`, :func:`zipfian`).
- :mod:`workloads.mixes`: operation mixes: :func:`write_only`, :func:`half` (50/50),
  :func:`read_mostly` (95% reads), :func:`read_only` on a KVStore; :class:`CounterMix` on a Counter.
- :mod:`workloads.drivers`: :class:`LoadGenerator` Ray actors offering a :class:`LoadSpec` closed-loop
  or open-loop; :func:`run_load` returns every operation as a DataFrame; :func:`summarize`.
"""

from .drivers import COLUMNS, OK, OVERLOAD, LoadGenerator, LoadSpec, run_load, summarize
from .keys import KeyChooser, Uniform, Zipfian, uniform, zipfian
from .mixes import CounterMix, KVMix, Mix, half, read_mostly, read_only, write_only

__all__ = [
    "COLUMNS", "OK", "OVERLOAD", "CounterMix", "KVMix", "KeyChooser", "LoadGenerator", "LoadSpec", "Mix", "Uniform",
    "Zipfian", "half", "read_mostly", "read_only", "run_load", "summarize", "uniform", "write_only", "zipfian",
]
