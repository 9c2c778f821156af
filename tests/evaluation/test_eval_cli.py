"""`focusft eval` end to end on a tiny checkpoint: table, JSON and plot, both masks."""

import json


from chat_fixtures import save_chat_model
from focusft.cli import main


def save_tiny(path):
    save_chat_model(path, layers=2, positions=4096)
    return path


def test_eval_babilong_both_masks_writes_reports(tmp_path, capsys):
    model = save_tiny(tmp_path / "m")
    out = tmp_path / "res"
    code = main(["eval", "--model", str(model), "--suite", "babilong", "--tasks", "qa1,qa2",
                 "--lengths", "0k,1k", "--samples", "2", "--mask", "both", "--out", str(out),
                 "--no_few_shot"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {f"{model} [causal]", f"{model} [prefix]"}
    for entry in results["models"].values():
        assert set(entry["scores"]) == {"qa1", "qa2"}
        assert all(set(v) == {0, 1000} or set(v) == {"0", "1000"} for v in entry["scores"].values())
        assert len(entry["samples"]) == 2 * 2 * 2
        rec = entry["samples"][0]
        assert {"prompt", "references", "output", "score"} <= set(rec)
        assert rec["prompt"].endswith("<|im_start|>assistant\n") and 0 <= rec["score"] <= 1
        lo, hi = entry["intervals"]["qa1"]["1000"]
        assert 0 <= lo <= entry["scores"]["qa1"]["1000"] <= hi <= 100
    assert results["settings"]["noise"].startswith(("books", "procedural"))
    table = (out / "results.md").read_text()
    assert "| qa1 | 1000 |" in table and "[prefix]" in table and "prompt set: focusft" in table
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "| qa2 | 0 |" in capsys.readouterr().out


def test_eval_ruler_default_lengths_run_without_chat_template(tmp_path):
    model = save_tiny(tmp_path / "m")
    out = tmp_path / "res"
    assert main(["eval", "--model", str(model), "--suite", "ruler", "--tasks", "niah_single_1,vt",
                 "--samples", "1", "--chat_template", "none", "--haystack", "procedural",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["models"][f"{model} [causal]"]
    assert set(entry["scores"]) == {"niah_single_1", "vt"}
    assert all(set(v) == {"4096"} for v in entry["scores"].values())  # RULER's default 4k
    for rec in entry["samples"]:  # plain text, ending with the answer prefix
        assert "<|im_start|>" not in rec["prompt"] and rec["prompt"].endswith((" is", "they are:"))
    assert results["settings"]["chat_template"].startswith("none")


def test_eval_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_bad_haystack_is_a_clear_error(tmp_path, capsys):
    model = save_tiny(tmp_path / "m")
    code = main(["eval", "--model", str(model), "--haystack", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "haystack" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_loglik_two_checkpoints_prints_metrics_and_paired_comparison(tmp_path, capsys):
    a = save_chat_model(tmp_path / "a", layers=2, positions=4096, seed=0)
    b = save_chat_model(tmp_path / "b", layers=2, positions=4096, seed=1)
    out = tmp_path / "res"
    code = main(["eval", "--model", str(a), "--model", str(b), "--scoring", "loglik",
                 "--tasks", "qa1,qa5", "--lengths", "0k", "--samples", "3", "--mask", "both",
                 "--no_few_shot", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["models"]) == 4
    for entry in results["models"].values():
        rec = entry["samples"][0]
        assert {"acc", "acc_norm", "gold_nll", "gold_logprob", "rank", "choice_logprobs"} <= set(rec)
        assert len(rec["choice_logprobs"]) == 6 and 1 <= rec["rank"] <= 6  # qa1: six places
        assert rec["gold_nll"] > 0 and rec["score"] == rec["acc"]
        assert entry["acc_norm"]["qa1"] and entry["gold_nll"]["qa5"]
    pairs = {(c["a"], c["b"], c["metric"]) for c in results["comparison"]}
    assert len(pairs) == 6 * 2  # every pair of the four (model, mask) entries, acc and NLL
    assert all(c["n"] == 6 for c in results["comparison"])
    printed = capsys.readouterr().out
    assert "## Paired comparison" in printed and "McNemar" in printed and "gold NLL" in printed


def test_eval_loglik_refuses_open_answer_tasks(tmp_path, capsys):
    model = save_tiny(tmp_path / "m")
    code = main(["eval", "--model", str(model), "--suite", "ruler", "--scoring", "loglik",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "closed answer set" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
