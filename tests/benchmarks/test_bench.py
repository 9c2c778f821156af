"""`focusft bench`: the --tiny sweep end to end through the CLI, and the pieces it relies on."""

import json
import math

import pytest

from focusft import cli
from focusft.benchmarks.bench import METHODS, BenchSpec, cost_floor, parse_length
from focusft.benchmarks.bench_sweep import pairwise, skip_reason, step_seconds


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
        assert len(row["times_s"]) == 1 and all(t > 0 for t in row["times_s"])  # memory cells
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


def test_tiny_bench_interleaves_the_methods_round_by_round(tiny_report):
    report, md = tiny_report
    assert [r["seq_len"] for r in report["interleaved"]] == [256, 512]
    for row in report["interleaved"]:
        assert row["status"] == "ok" and row["order"] == list(METHODS)
        assert len(row["rounds"]) == 2 and all(set(r) == set(METHODS) for r in row["rounds"])
        assert all(s > 0 for r in row["rounds"] for s in r.values())
    for r in report["ratios"]:
        pairs = r["focusft_over_glm_pairs"]
        assert pairs["n"] == 2 and pairs["min"] <= pairs["median"] <= pairs["max"]
        assert r["focusft_over_glm"] == pairs["median"]
    assert "## Every interleaved round" in md and "pair by pair" in md


def test_ratios_are_taken_pair_by_pair_so_drift_cancels():
    # the machine slows down 4x over the rounds; FocuSFT is always 1.5x SFT-GLM within a round
    rounds = [{"sft-glm": s, "focusft": 1.5 * s} for s in (1.0, 2.0, 4.0)]
    report = {"interleaved": [{"seq_len": 1024, "status": "ok", "rounds": rounds,
                               "median_s": {"sft-glm": 2.0, "focusft": 3.0}}], "results": []}
    pairs = pairwise(report, 1024, "focusft", "sft-glm")
    assert pairs == {"median": 1.5, "min": 1.5, "max": 1.5, "n": 3}
    assert step_seconds(report, "focusft", 1024) == 3.0
    assert pairwise(report, 2048, "focusft", "sft-glm") is None


def test_smollm2_shape_builds_the_real_bases_architecture():
    from focusft.benchmarks.bench import SHAPES, build_model

    spec = SHAPES["smollm2"]
    assert (spec.layers, spec.hidden, spec.heads, spec.kv_heads, spec.vocab) == (30, 576, 9, 3, 49152)
    small = type(spec)(**{**spec.__dict__, "layers": 2, "vocab": 256})
    model = build_model(small, 64, "cpu")
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_turns_split_the_row_into_equal_turns_with_an_eighth_response():
    from focusft.core.masks import AttentionLayout
    from focusft.benchmarks.bench import build_batch, turn_spans

    assert turn_spans(4096, 1) == [(0, 3584, 4096)]
    spans = turn_spans(4096, 256)
    assert len(spans) == 256 and all((e - s, e - r) == (16, 2) for s, r, e in spans)
    batch = build_batch(1000, 64, 512, "cpu", 0, turns=7)
    layout = AttentionLayout.glm(batch["loss_mask"], [1000])
    assert [b.causal for b in layout.rows[0]] == [False, True] * 7
    assert int(batch["loss_mask"].sum()) == sum(e - r for _, r, e in turn_spans(1000, 7))
    plain = build_batch(1000, 64, 512, "cpu", 0)
    assert plain["loss_mask"][0].nonzero().flatten().tolist() == list(range(936, 1000))
    with pytest.raises(ValueError, match="--turns"):
        BenchSpec(lengths=(1024, 256), turns=256)


def test_turns_and_response_tokens_together_are_refused(tmp_path, capsys):
    assert cli.main(["bench", "--tiny", "--turns", "4", "--response-tokens", "8",
                     "--out", str(tmp_path)]) == 2
    assert "--turns" in capsys.readouterr().err
    assert not (tmp_path / "benchmark.json").exists()


def test_cpu_clock_counts_this_process_work_not_waiting():
    import time

    from focusft.benchmarks.bench import Clock

    wall, cpu = Clock("cpu", "wall"), Clock("cpu", "cpu")
    w0, c0 = wall(), cpu()
    time.sleep(0.3)  # the CPU is given away, as when other jobs take their turn
    assert wall() - w0 >= 0.3 and cpu() - c0 < 0.1
    with pytest.raises(ValueError, match="--clock"):
        BenchSpec(clock="cpu", device="cuda")


def test_bench_with_the_cpu_clock_says_so(tmp_path):
    assert cli.main(["bench", "--tiny", "--lengths", "256", "--repeats", "1", "--warmup", "0",
                     "--clock", "cpu", "--threads", "1", "--no-live-memory", "--inline",
                     "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["spec"]["clock"] == "cpu" and "--clock cpu" in report["command"]
    assert all(s > 0 for r in report["interleaved"][0]["rounds"] for s in r.values())
    assert "CPU time of the bench process" in (tmp_path / "benchmark.md").read_text()
