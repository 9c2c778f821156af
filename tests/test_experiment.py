"""`focusft experiment --smoke` end to end: pretrain, four methods, eval, leakage probe, report."""

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
    assert (report.parent / "results" / "accuracy_vs_length_smoke.png").is_file()
    for method in METHODS:
        assert f"| {method} |" in text
        assert method in summary["accuracy"]
        assert {p["objective"] for p in summary["probes"][method]} == {"response", "context"}
        assert (out / "runs" / f"{method}-seed0" / "final" / "model.safetensors").is_file()
    assert "git commit" in text and "smoke" in text
    assert all(n[1] > 0 for row in summary["accuracy"].values() for n in row["counts"].values())
