"""A Jepsen-style test for a live raft_actors cluster: clients, a nemesis, a history, a verdict.

Concurrent clients run a workload (registers on the KV store by default, a counter, or your own
state machine with a model) while a nemesis injects faults on a schedule a seed decides; then
everything heals, the cluster settles, the final state is read, and the whole history is
checked for linearizability with :mod:`raft_actors.linearizability`. A report directory shows
the verdict, the counts, the fault timeline, latency and throughput over time with the faults
shaded, and an HTML view of the history::

    from raft_actors.jepsen import JepsenTest, run, write_report

    result = run(JepsenTest(nodes=3, clients=8, duration=30, nemeses=("partition", "pause", "kill")))
    print(result.verdict)                # "linearizable"
    write_report(result, "jepsen-report")

From the command line: ``raft-actors jepsen --nemesis pause,partition,kill --time 60``.
"""

from __future__ import annotations

from .nemesis import NEMESES, Fault, Nemesis
from .report import summary
from .report import write as write_report
from .runner import JepsenResult, JepsenTest, heal_all, run
from .workload import WORKLOADS, Workload, counter, register

__all__ = ["NEMESES", "WORKLOADS", "Fault", "JepsenResult", "JepsenTest", "Nemesis", "Workload", "counter",
           "heal_all", "register", "run", "summary", "write_report"]
