"""The report of a Jepsen-style test: a directory to open.

- ``verdict.json``: the verdict, the counts, the test's settings, the checker's summary;
- ``summary.txt``: the same in words, with the fault timeline;
- ``ops.csv``: every operation; ``faults.csv``: the fault timeline;
- ``latency.png``: every operation's latency over time, by outcome, with the faults shaded (in
  the style of Jepsen's plots); ``throughput.png``: completed operations per second;
- ``history.html``: the checker's view of the history (see :mod:`raft_actors.history_view`).

The PNGs need matplotlib (``pip install "raft-actors[plot]"``); without it they are skipped.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

from .runner import JepsenResult

_COLORS = {"partition": "#e57373", "kill": "#9575cd", "pause": "#4fc3f7", "net": "#ffb74d", "membership": "#81c784",
           "disk": "#a1887f", "heal": "#e0e0e0"}


def write(result: JepsenResult, out: str) -> dict[str, str]:
    """Write the report into directory ``out``; returns the files by name."""
    os.makedirs(out, exist_ok=True)
    files: dict[str, str] = {}
    t = result.test
    counts = result.counts()
    verdict = {
        "verdict": result.verdict,
        "linearizable": result.ok,
        "operations": len(result.ops),
        "history_checked": len(result.history),
        "counts": counts.to_dict("records"),
        "faults": len(result.faults[result.faults["nemesis"] != "heal"]),
        "test": {"nodes": t.nodes, "clients": t.clients, "duration_s": t.duration, "nemeses": list(t.nemeses),
                 "workload": getattr(t.workload, "name", str(t.workload)), "seed": t.seed, "rate": t.rate,
                 "read_consistency": t.read_consistency, "op_timeout_s": t.op_timeout},
        "stats": result.stats,
    }
    if result.check is not None and not result.check.ok:
        verdict["checker"] = result.check.describe(max_lines=40)
    files["verdict.json"] = _dump(out, "verdict.json", json.dumps(verdict, indent=2, default=str))
    files["ops.csv"] = os.path.join(out, "ops.csv")
    result.ops.to_csv(files["ops.csv"], index=False)
    files["faults.csv"] = os.path.join(out, "faults.csv")
    result.faults.to_csv(files["faults.csv"], index=False)
    files["summary.txt"] = _dump(out, "summary.txt", summary(result))
    if result.check is not None:
        title = (f"raft_actors jepsen: {verdict['test']['workload']}, nemeses {','.join(t.nemeses) or 'none'}, "
                 f"seed {t.seed}")
        files["history.html"] = _dump(out, "history.html", result.check.to_html(result.history, title))
    for name, fn in (("latency.png", _plot_latency), ("throughput.png", _plot_throughput)):
        path = os.path.join(out, name)
        if fn(result, path):
            files[name] = path
    return files


def summary(result: JepsenResult) -> str:
    """The run in words: verdict, counts, the fault timeline."""
    t = result.test
    lines = [f"verdict: {result.verdict.upper()}",
             (f"{len(result.ops)} operations by {t.clients} clients over {t.duration:.0f} s on {t.nodes} nodes; "
              f"nemeses: {', '.join(t.nemeses) or 'none'}; seed {t.seed}; reads: {t.read_consistency}"),
             "", "operations (ok: happened and answered; fail: did not happen; info: unknown outcome):",
             result.counts().to_string(index=False), "", "faults:"]
    for f in result.faults.itertuples():
        end = "?" if f.end is None or pd.isna(f.end) else f"{f.end:7.2f}"
        lines.append(f"  {f.start:7.2f} - {end} s  {f.nemesis:10s} {f.what}" + (f"  [{f.detail}]" if f.detail else ""))
    if result.check is not None and not result.check.ok:
        lines += ["", result.check.describe(max_lines=40)]
    elif result.check is None:
        lines += ["", f"the checker gave no answer: {result.stats.get('checker', '')}"]
    return "\n".join(lines) + "\n"


def _dump(out: str, name: str, text: str) -> str:
    path = os.path.join(out, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _shade(ax: Any, result: JepsenResult) -> None:
    seen = set()
    for f in result.faults.itertuples():
        end = f.end if f.end is not None and not pd.isna(f.end) else f.start
        label = f.nemesis if f.nemesis not in seen else None
        seen.add(f.nemesis)
        ax.axvspan(f.start, max(end, f.start + 0.05), color=_COLORS.get(f.nemesis, "#ddd"), alpha=0.35, lw=0,
                   label=label)


def _plot_latency(result: JepsenResult, path: str) -> bool:
    plt = _pyplot()
    if plt is None or result.ops.empty:
        return False
    ops = result.ops
    fig, ax = plt.subplots(figsize=(11, 4.5))
    _shade(ax, result)
    style = {"ok": ("#1565c0", "o"), "fail": ("#c62828", "x"), "info": ("#ef6c00", "^")}
    for outcome, (color, marker) in style.items():
        sel = ops[ops["outcome"] == outcome]
        if sel.empty:
            continue
        end = sel["end"].fillna(sel["start"] + result.test.op_timeout)
        lat = (end - sel["start"]) * 1e3
        for kind, alpha in (("write", 0.8), ("read", 0.4)):
            k = sel["kind"] == kind
            if k.any():
                ax.scatter(sel["start"][k], lat[k], s=6, color=color, marker=marker, alpha=alpha, lw=0.6,
                           label=f"{kind} {outcome}")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the start")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"latency of every operation; shaded: faults ({result.verdict})")
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_throughput(result: JepsenResult, path: str) -> bool:
    plt = _pyplot()
    if plt is None or result.ops.empty:
        return False
    ops = result.ops
    done = ops[ops["outcome"] == "ok"].dropna(subset=["end"])
    fig, ax = plt.subplots(figsize=(11, 3.2))
    _shade(ax, result)
    if not done.empty:
        per_s = done.groupby([done["end"].astype(int), "kind"]).size().unstack(fill_value=0)
        for kind in per_s.columns:
            ax.plot(per_s.index + 0.5, per_s[kind], lw=1.2, label=f"{kind}s completed / s")
    ax.set_xlabel("seconds since the start")
    ax.set_ylabel("operations / s")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
