"""The Jepsen-style suite on a live cluster: each nemesis, alone, for a short run ends with a
linearizable verdict and no acknowledged write lost; a deliberately broken setting is caught;
the checker's HTML view of a passing and of a failing history."""

from __future__ import annotations

import json
import os

import pytest

from raft_actors.jepsen import NEMESES, JepsenTest, register, run, write_report
from raft_actors.linearizability import Operation, check, kv_model


@pytest.fixture(scope="module")
def jepsen_ray(ray_session: None):
    yield


@pytest.mark.parametrize("nemesis", sorted(NEMESES))
def test_each_nemesis_alone_gives_a_linearizable_history(jepsen_ray, nemesis, tmp_path) -> None:
    test = JepsenTest(nodes=3, clients=6, duration=5.0, nemeses=(nemesis,), seed=3, interval=(0.5, 1.5),
                      op_timeout=3.0, settle=15.0)
    result = run(test)
    faults = result.faults[result.faults["nemesis"] == nemesis]
    assert len(faults) >= 1, f"the {nemesis} nemesis never struck"
    assert result.verdict == "linearizable", result.check.describe() if result.check else result.stats
    assert result.stats["final_reads"] == len(test.workload.final_reads)  # the state was read back in the end
    counts = result.counts().set_index("kind")
    assert counts.loc["write", "ok"] > 20 and counts.loc["read", "ok"] > 10  # the clients did make progress
    if nemesis == "disk":
        assert not faults["detail"].str.contains("NOT DETECTED").any(), faults.to_string()
    files = write_report(result, str(tmp_path / "report"))
    assert {"verdict.json", "ops.csv", "faults.csv", "summary.txt", "history.html"} <= set(files)
    with open(files["verdict.json"]) as f:
        assert json.load(f)["verdict"] == "linearizable"


def test_stale_reads_checked_as_linearizable_are_caught(jepsen_ray) -> None:
    """The mutation check: reads that may be served by a lagging node ("stale") must make the
    checker say NOT linearizable on some seed (a partition leaves a node behind)."""
    wl = register(keys=("a",), read_share=0.5, cas_share=0.0)
    verdicts = []
    for seed in range(4):
        result = run(JepsenTest(nodes=3, clients=6, duration=6.0, nemeses=("partition",), workload=wl, seed=seed,
                                read_consistency="stale", interval=(0.3, 0.8), op_timeout=2.0))
        verdicts.append(result.verdict)
        if result.verdict == "not linearizable":
            html = result.check.to_html(result.history, "stale reads")
            assert "NOT linearizable" in html and ("REFUSED" in html or "dead end" in html)
            return
    pytest.fail(f"stale reads were never caught: {verdicts}")


def _history(bad: bool) -> list[Operation]:
    ops = [Operation("a", ("put", "x", 1), 0.0, 1.0, None), Operation("b", ("get", "x"), 1.5, 2.0, 1),
           Operation("c", ("put", "x", 2), 0.5, None),  # an unknown outcome
           Operation("b", ("get", "y"), 0.2, 0.4, None)]
    if bad:
        ops.append(Operation("b", ("get", "x"), 2.5, 3.0, "</script><b>never written"))
    return ops


def test_the_checkers_html_view_of_a_linearizable_history(tmp_path) -> None:
    h = _history(bad=False)
    result = check(h, kv_model())
    assert result.ok and sum(len(lin) for lin in result.linearizations) >= 3
    page = result.to_html(h, "a good history")
    assert page.startswith("<!doctype html>") and "linearizable" in page and "NOT linearizable" not in page
    assert "http://" not in page and "https://" not in page  # self-contained
    data = json.loads(page.split('id="data">')[1].split("</script>")[0].replace("<\\/", "</"))
    assert len(data["ops"]) == len(h) and data["clients"] == ["a", "b", "c"]
    assert any(op["tag"].startswith("#1 ") for op in data["ops"])  # the linearization is numbered
    (tmp_path / "good.html").write_text(page)
    assert os.path.getsize(tmp_path / "good.html") > 1000


def test_the_checkers_html_view_of_a_history_that_is_not(tmp_path) -> None:
    h = _history(bad=True)
    result = check(h, kv_model())
    assert not result.ok
    page = result.to_html(h, "a bad history")
    assert "NOT linearizable" in page and "REFUSED" in page
    assert "</script><b>" not in page.split('id="data">')[1].split("</script>")[0]  # escaped for the page
    data = json.loads(page.split('id="data">')[1].split("</script>")[0].replace("<\\/", "</"))
    classes = {op["tip"].split("\n")[1]: op["cls"] for op in data["ops"]}
    assert "refused" in classes["('get', 'x')"] or any("refused" in c for c in classes.values())
    assert any("prefix" in c for c in classes.values()) and any("dim" in c for c in classes.values())
