"""`focusft experiment --smoke` end to end: base, four methods, eval, leakage probe, report."""

import json

from focusft.cli import main
from focusft.experiment import METHODS, wilson


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert round(lo, 1) == 23.7 and round(hi, 1) == 76.3
    assert wilson(0, 0) == (0.0, 100.0)
    assert wilson(10, 10)[1] > 99.99


def test_experiment_smoke_writes_report(tmp_path):
    out, report = tmp_path / "exp", tmp_path / "docs" / "results.md"
    code = main(["experiment", "--smoke", "--out", str(out), "--report", str(report)])
    assert code == 0
    summary = json.loads((out / "experiment.json").read_text())
    text = report.read_text()
    for plot in ("task_accuracy_vs_length_smoke.png", "attention_over_training_smoke.png"):
        assert (report.parent / "results" / plot).is_file()
    for method in METHODS:
        assert f"| {method} |" in text
        for suite in ("task", "babilong", "ruler"):
            assert method in summary["accuracy"][suite]
        assert {p["objective"] for p in summary["probes"][method]} == {"response", "context"}
        assert (out / "runs" / f"{method}-seed0" / "final" / "model.safetensors").is_file()
        # diagnostics before the first step and after the only one
        assert [r["step"] for r in summary["runs"][f"{method}|0"]["diagnostics"]] == [0, 1]
    assert "git commit" in text and "smoke" in text
    for suite in ("task", "babilong", "ruler"):
        rows = summary["accuracy"][suite].values()
        assert all(n[1] > 0 for row in rows for n in row["counts"].values())
