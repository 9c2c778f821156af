"""`focusft experiment --smoke` end to end: base, four methods, eval, leakage probe, report."""

import json
import shutil

from focusft.cli import main
from focusft.experiments.plan import METHODS
from focusft.experiments.tally import wilson


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
        # diagnostics before the first step and after the only one, under the training mask
        # and under causal
        records = summary["runs"][f"{method}|0"]["diagnostics"]
        masks = ["causal"] if method == "sft-causal" else ["glm", "causal"]
        for mask in masks:
            assert [r["step"] for r in records if r["mask"] == mask] == [0, 1]
        assert len(records) == 2 * len(masks)
    assert "git commit" in text and "smoke" in text
    for suite in ("task", "babilong", "ruler"):
        rows = summary["accuracy"][suite].values()
        assert all(n[1] > 0 for row in rows for n in row["counts"].values())


def _args(**kw):
    import argparse

    base = dict(quick=False, smoke=False, base=None, seeds=None, methods=None, tasks=None,
                out=None, report=None, task=None, haystack=None, steps=None, eval_samples=None,
                no_sweep=False)
    return argparse.Namespace(**{**base, **kw})


def test_overrides_mark_the_run_reduced():
    import pytest

    from focusft.errors import UserError
    from focusft.experiments.plan import config_from_args

    full = config_from_args(_args(task="real"))
    assert full.label == "full" and full.task == "real" and full.select
    assert full.report == "docs/results-real.md" and full.out == "runs/experiment-real"
    assert config_from_args(_args()).report == "docs/results.md"
    reduced = config_from_args(_args(task="real", seeds="0", steps=5, no_sweep=True))
    assert (reduced.label, reduced.seeds, reduced.steps, reduced.select) == ("reduced", [0], 5, False)
    assert config_from_args(_args(quick=True, steps=3)).label == "quick"
    with pytest.raises(UserError, match="--steps"):
        config_from_args(_args(steps=0))


def test_retired_pretrain_says_so_and_names_the_commit(capsys):
    import pytest

    from focusft.commands.pretrain import LAST_COMMIT

    assert main(["pretrain", "--output_dir", "runs/base", "--recipe", "sinks"]) == 2
    err = capsys.readouterr().err
    assert "focusft pretrain: error: this command was retired" in err
    assert LAST_COMMIT in err and "docs/history.md" in err
    with pytest.raises(SystemExit) as exit_:  # argparse: not a choice any more
        main(["experiment", "--task", "long"])
    assert exit_.value.code == 2


def test_real_task_smoke_runs_the_2x2_scores_by_likelihood_and_resumes(tmp_path):
    from chat_fixtures import save_chat_model

    base = save_chat_model(tmp_path / "base", positions=2048)
    out, report = tmp_path / "exp", tmp_path / "docs" / "results-real.md"
    args = ["experiment", "--smoke", "--task", "real", "--base", str(base), "--out", str(out),
            "--report", str(report)]
    assert main(args) == 0
    summary = json.loads(report.with_suffix(".json").read_text())
    sel = summary["selection"]  # two grid points, the lower validation loss chosen
    assert len(sel["points"]) == 2
    best = min(sel["points"].values(), key=lambda p: p["eval_loss"])
    assert sel["chosen"] == [best["k"], best["lr"]]
    for seed in (0, 1):  # the four cells, both seeds, identical budget; FocuSFT with the choice
        for cell in ("sft-causal", "sft-glm", "focusft-causal", "focusft-glm"):
            flags = summary["runs"][f"{cell}|{seed}"]["flags"]
            assert flags[flags.index("--seed") + 1] == str(seed)
            assert flags[flags.index("--attention") + 1] == cell.split("-")[1]
            masks = "causal" if cell.endswith("causal") else "glm,causal"
            assert flags[flags.index("--diagnostics_mask") + 1] == masks
            assert flags[flags.index("--train_sampling_strategy") + 1] == "random"
            if cell.startswith("focusft"):
                assert flags[flags.index("--inner_lr") + 1] == f"{best['lr']:g}"
    # each trained cell under its own mask, the base under both; 2 rows per (length) per seed
    assert set(summary["cells"]) == {"base (no SFT) [causal]", "base (no SFT) [prefix]",
                                     "sft-causal [causal]", "sft-glm [prefix]",
                                     "focusft-causal [causal]", "focusft-glm [prefix]"}
    assert summary["cells"]["sft-glm [prefix]"]["all"]["n"] == 2 * 2 * 2
    assert summary["cells"]["base (no SFT) [causal]"]["all"]["n"] == 2 * 2 * 2
    dec = summary["decomposition"]
    assert len(dec) == 5
    pooled = dec["mask effect (SFT-GLM - SFT-causal)"]["pooled"]
    assert pooled["acc"]["n"] == 8 and "mcnemar_p" in pooled["acc"]
    lo, hi = pooled["gold_nll"]["interval"]
    assert lo <= pooled["gold_nll"]["difference"] <= hi
    assert set(dec["interaction ((FG - SG) - (FC - SC))"]) == {"pooled", "0", "256"}
    assert summary["leakage"]["focusft-glm"]["response"]["before"] > 0
    assert summary["runs"]["focusft-glm|0"]["history"]  # the inner losses per logging step
    text = report.read_text()
    for part in ("## The goal", "## The power calculation", "## The decomposition",
                 "**Verdict: rule", "smoke"):
        assert part in text
    assert "- the mask alone: on the untouched base" in text
    # the page again from its .json alone: the same page
    from focusft.experiments import real_report
    report.unlink()
    assert real_report.main([str(report.with_suffix(".json"))]) == 0 and report.read_text() == text
    # a rerun reuses every finished run and scored model: nothing is retrained or rescored,
    # even where the weights are gone (a finished run needs only its records)
    stamp = (out / "runs" / "focusft-glm-seed0" / "result.json").stat().st_mtime_ns
    scored = (out / "eval" / "sft-glm-seed1.json").stat().st_mtime_ns
    for run in (out / "runs").iterdir():
        shutil.rmtree(run / "final")
    assert main(args) == 0
    assert (out / "runs" / "focusft-glm-seed0" / "result.json").stat().st_mtime_ns == stamp
    assert (out / "eval" / "sft-glm-seed1.json").stat().st_mtime_ns == scored
    again = json.loads(report.with_suffix(".json").read_text())
    assert again["cells"] == summary["cells"] and again["leakage"] == summary["leakage"]


def test_the_verdict_follows_the_decision_rule():
    from focusft.experiments import real_report
    from focusft.experiments.factorial import EFFECTS

    def summary(mask, inner):
        acc = lambda lo, hi: {"pooled": {"acc": {"difference": (lo + hi) / 2,  # noqa: E731
                                                 "interval": [lo, hi], "n": 100}}}
        dec = {name: acc(-0.1, 0.1) for name in EFFECTS}
        dec["mask effect (SFT-GLM - SFT-causal)"] = acc(*mask)
        dec["inner loop under GLM (FocuSFT-GLM - SFT-GLM)"] = acc(*inner)
        return {"decomposition": dec}

    assert real_report.verdict(summary((0.01, 0.1), (0.02, 0.2))) == ("1", "focusft")
    assert real_report.verdict(summary((0.01, 0.1), (-0.02, 0.2))) == ("2", "sft-glm")
    assert real_report.verdict(summary((-0.01, 0.1), (-0.3, -0.1))) == ("3", "sft-causal")
