"""An HTML view of a client history and its linearizability check, in one self-contained file.

One lane per client; each operation is a bar from its invocation to its response (an
operation whose outcome is unknown runs to the end of the history, hatched). Hovering a bar
shows the operation, its result and its times. With a linearizable history, each bar carries
its position in the linearization found; with a history that is not, the failing sub-history
is in front: the longest linearizable prefix in green (numbered), the operations that could
have come next in orange (red: the model refuses their result there), the rest greyed. A list
under the chart says the same in words. Nothing is loaded from the network.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .linearizability import CheckResult, Operation

_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px}
.verdict{font-weight:600;padding:2px 8px;border-radius:4px;color:#fff}
.ok{background:#2e7d32}.bad{background:#c62828}
#chart{position:relative;border:1px solid #ccc;overflow-x:auto;overflow-y:hidden;margin-top:10px;background:#fafafa}
#inner{position:relative}
.lane{position:absolute;left:0;right:0;border-bottom:1px solid #eee}
.lbl{position:sticky;left:0;z-index:2;background:#fafafa;padding:0 4px;font-size:11px;color:#555;width:90px;
     overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.op{position:absolute;height:14px;border-radius:3px;font-size:10px;color:#fff;overflow:hidden;white-space:nowrap;
    box-sizing:border-box;padding:0 2px;cursor:default;opacity:.9}
.op:hover{opacity:1;outline:2px solid #000;z-index:3}
.w{background-color:#1565c0}.r{background-color:#6a1b9a}.x{background-color:#607d8b}
.unknown{background-image:repeating-linear-gradient(45deg,rgba(255,255,255,.35) 0 4px,transparent 4px 8px)}
.prefix{background-color:#2e7d32}.cand{background-color:#ef6c00}.refused{background-color:#c62828}.dim{opacity:.25}
.axis{position:absolute;top:0;bottom:0;border-left:1px dashed #ddd;font-size:10px;color:#999;padding-left:2px}
.legend span{display:inline-block;margin-right:12px}.legend i{display:inline-block;width:12px;height:10px;
    margin-right:4px;border-radius:2px;vertical-align:middle}
pre{background:#f4f4f4;padding:8px;overflow-x:auto;font-size:12px}
button{margin-right:4px}
"""

_JS = """
const D = JSON.parse(document.getElementById('data').textContent);
let scale = D.scale;
function draw(){
  const inner = document.getElementById('inner');
  inner.innerHTML = '';
  const lanes = D.clients.length, laneH = 18, width = Math.max(800, (D.t1 - D.t0) * scale + 120);
  inner.style.width = width + 'px'; inner.style.height = (lanes * laneH + 20) + 'px';
  const x = t => 100 + (t - D.t0) * scale;
  const step = Math.pow(10, Math.floor(Math.log10((D.t1 - D.t0) || 1)));
  for (let t = Math.ceil(D.t0 / step) * step; t <= D.t1; t += step / (scale * step > 400 ? 10 : 1)) {
    const a = document.createElement('div'); a.className = 'axis'; a.style.left = x(t) + 'px';
    a.textContent = (+t.toFixed(3)) + 's'; inner.appendChild(a);
  }
  D.clients.forEach((c, k) => {
    const lane = document.createElement('div'); lane.className = 'lane';
    lane.style.top = (k * laneH + 16) + 'px'; lane.style.height = laneH + 'px';
    const l = document.createElement('div'); l.className = 'lbl'; l.textContent = c; l.title = c;
    lane.appendChild(l); inner.appendChild(lane);
  });
  D.ops.forEach(o => {
    const b = document.createElement('div');
    b.className = 'op ' + o.cls;
    const end = o.ret === null ? D.t1 : o.ret;
    b.style.left = x(o.call) + 'px'; b.style.width = Math.max(3, (end - o.call) * scale) + 'px';
    b.style.top = (o.lane * laneH + 18) + 'px';
    b.textContent = o.tag; b.title = o.tip;
    inner.appendChild(b);
  });
}
function zoom(f){ scale *= f; draw(); }
draw();
"""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "..."


def render(history: Sequence[Operation], result: CheckResult, title: str = "history",
           is_write: Any = None) -> str:
    """The HTML page (see the module doc). ``is_write(op)`` tells writes from reads for the
    colours (default: an input whose first item is ``"get"`` or ``"read"`` is a read)."""
    ops = sorted(history, key=lambda o: (o.call, str(o.client)))
    clients = sorted({str(o.client) for o in ops})
    lane_of = {c: k for k, c in enumerate(clients)}
    times = [o.call for o in ops] + [o.ret for o in ops if o.ret is not None]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    if t1 <= t0:
        t1 = t0 + 1e-3
    if is_write is None:
        def is_write(op: Operation) -> bool:
            inp = op.input
            return not (isinstance(inp, tuple) and inp and inp[0] in ("get", "read"))

    order: dict[int, int] = {}  # id(op) -> position (linearization, or the prefix on failure)
    focus: set[int] = set()
    cands: dict[int, bool] = {}
    if result.ok:
        for lin in result.linearizations:
            for pos, op in enumerate(lin, 1):
                order[id(op)] = pos
    else:
        focus = {id(o) for o in (result.partition or [])}
        for pos, op in enumerate(result.longest_prefix, 1):
            order[id(op)] = pos
        cands = {id(op): legal for op, legal in result.next_candidates}
    rows = []
    for o in ops:
        cls = "w" if is_write(o) else "r"
        if o.ret is None:
            cls += " unknown"
        tag = ""
        if not result.ok:
            if id(o) in cands:
                cls += " cand" if cands[id(o)] else " refused"
            elif id(o) in order:
                cls += " prefix"
            elif id(o) not in focus:
                cls += " dim"
        if id(o) in order:
            tag = f"#{order[id(o)]} "
        out = "?" if o.ret is None else _short(o.output)
        tag += f"{_short(o.input, 24)}→{_short(out, 12) if o.ret is not None else '?'}"
        tip = (f"client {o.client}\n{o.input!r}\n→ {'unknown outcome' if o.ret is None else repr(o.output)}\n"
               f"invoked {o.call:.6f} s, " + ("no response" if o.ret is None else
                                              f"returned {o.ret:.6f} s ({(o.ret - o.call) * 1e3:.2f} ms)"))
        if id(o) in order:
            tip += f"\nposition {order[id(o)]} in the " + ("linearization" if result.ok else "longest prefix")
        if id(o) in cands:
            tip += "\ncould come next: " + ("accepted, but only dead ends follow" if cands[id(o)]
                                            else "REFUSED by the model here")
        rows.append({"call": o.call, "ret": o.ret, "lane": lane_of[str(o.client)], "cls": cls, "tag": tag, "tip": tip})
    data = {"clients": clients, "ops": rows, "t0": t0, "t1": t1, "scale": 1000.0 / (t1 - t0)}
    verdict = ("<span class='verdict ok'>linearizable</span>" if result.ok
               else "<span class='verdict bad'>NOT linearizable</span>")
    n_unknown = sum(o.ret is None for o in ops)
    legend = ("<div class='legend'><span><i class='w' style='background:#1565c0'></i>write</span>"
              "<span><i style='background:#6a1b9a'></i>read</span>"
              "<span><i class='unknown' style='background-color:#1565c0'></i>unknown outcome</span>")
    if not result.ok:
        legend += ("<span><i style='background:#2e7d32'></i>longest linearizable prefix (numbered)</span>"
                   "<span><i style='background:#ef6c00'></i>could come next (dead end)</span>"
                   "<span><i style='background:#c62828'></i>could come next, refused by the model</span>"
                   "<span><i style='background:#607d8b;opacity:.25'></i>other sub-histories</span>")
    else:
        legend += "<span>#n: position in the linearization found (per key)</span>"
    legend += "</div>"
    payload = json.dumps(data).replace("</", "<\\/")  # JSON inside a script element: no "</" may end it
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div>{verdict} &nbsp; {len(ops)} operations, {len(clients)} clients, {n_unknown} with unknown outcome,
{result.partitions_checked} sub-histories checked, over {t1 - t0:.3f} s</div>
{legend}
<div><button onclick="zoom(2)">zoom in</button><button onclick="zoom(0.5)">zoom out</button></div>
<div id="chart"><div id="inner"></div></div>
<h2 style="font-size:15px">What the checker found</h2>
<pre>{html.escape(result.describe(max_lines=200))}</pre>
<script type="application/json" id="data">{payload}</script>
<script>{_JS}</script>
</body></html>
"""
