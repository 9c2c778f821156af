"""`focusft bench`: the --tiny sweep end to end through the CLI, and the pieces it relies on."""

import json
import math

import pytest

from focusft import cli
from focusft.experiments.bench import METHODS, BenchSpec, cost_floor, parse_length
from focusft.experiments.bench_sweep import skip_reason


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["bench", "--tiny", "--out", str(out), "--repeats", "2"]) == 0
    return json.loads((out / "benchmark.json").read_text()), (out / "benchmark.md").read_text()


def test_tiny_bench_measures_every_method_and_length(tiny_report):
    report, _ = tiny_report
    assert report["spec"]["lengths"] == [256, 512]
    cells = {(r["method"], r["seq_len"]): r for r in report["results"]}
    assert set(cells) == {(m, s) for m in METHODS for s in (256, 512)}
    for (method, _), row in cells.items():
        assert row["status"] == "ok", row
        assert len(row["times_s"]) == 2 and all(t > 0 for t in row["times_s"])
        assert row["median_s"] > 0 and row["peak_mem_bytes"] > 0 and row["live_peak_bytes"] > 0
        assert "retained_bytes" in row
        assert all(math.isfinite(x) for x in row["losses"])
        phases = row["phases_s"]
        assert phases["forward_s"] > 0 and phases["backward_s"] > 0
        if method == "focusft":  # the inner loop runs inside the forward
            assert 0 < phases["inner_s"] < phases["forward_s"]
        else:
            assert phases["inner_s"] == 0


def test_tiny_bench_reports_ratios_and_the_cost_floor(tiny_report):
    report, _ = tiny_report
    assert [r["seq_len"] for r in report["ratios"]] == [256, 512]
    for r in report["ratios"]:
        for key in ("focusft_over_glm", "glm_over_causal", "mem_focusft_over_causal"):
            assert r[key] > 0
        assert r["focusft_over_reference"] is None  # the reference table is for the default model
    assert report["cost_floor"]["issue"] == pytest.approx(1.4667, abs=1e-4)
    assert report["adapted_layers"] == 1  # layers int(2 * 0.65) .. 1
    assert report["cost_floor"]["actual_layers"] == pytest.approx((3 + 2 * 2 * 0.5) / 3)
    assert len(report["load_avg_start"]) == 3 and report["machine"]["device"] == "cpu"


def test_tiny_bench_markdown_has_every_method_and_length(tiny_report):
    report, md = tiny_report
    assert report["command"] in md
    for name in ("SFT-causal", "SFT-GLM", "FocuSFT"):
        assert name in md
    table = md.split("## Step time and peak memory")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| 256") or line.startswith("| 512")]
    assert len(rows) == 2 and all("–" not in row for row in rows)
    assert "FlexAttention" in md and "Load average" in md


def test_parse_length_and_cost_floor():
    assert [parse_length(x) for x in ("1k", "2K", "16k", "300")] == [1024, 2048, 16384, 300]
    assert cost_floor(2, 0.35) == pytest.approx(1.4667, abs=1e-4)
    assert cost_floor(0, 0.35) == 1.0


def test_bad_flags_exit_2_with_a_message_naming_the_flag(tmp_path, capsys):
    assert cli.main(["bench", "--tiny", "--methods", "sft,focusft", "--out", str(tmp_path)]) == 2
    assert "--methods" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--lengths"):
        BenchSpec(lengths=(64,), response_tokens=64)
    assert not (tmp_path / "benchmark.json").exists()


def test_longer_lengths_are_skipped_when_they_cannot_fit():
    spec = BenchSpec(lengths=(1024, 2048), config_timeout=100.0)
    ok = {"status": "ok", "seq_len": 1024, "median_s": 1.0, "peak_mem_bytes": 2**20}
    assert skip_reason(None, 2048, spec) is None
    assert skip_reason(ok, 2048, spec) is None  # 1 s x 4 x 4 steps = 16 s
    assert "config-timeout" in skip_reason({**ok, "median_s": 10.0}, 2048, spec)
    assert "GiB" in skip_reason({**ok, "peak_mem_bytes": 2**50}, 2048, spec)
    assert "timeout at 1024" in skip_reason({"status": "timeout", "seq_len": 1024}, 2048, spec)
