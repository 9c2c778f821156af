"""README's Python example runs as written (offline, embedded default), and its table of
defaults that differ from TRL's SFTConfig is exactly what the installed trl says."""

import enum
import re
from dataclasses import fields
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", section("Python API"), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    eval_loss, focus_loss = map(float, capsys.readouterr().out.split()[-2:])
    assert eval_loss > 0 and focus_loss > 0
    assert (tmp_path / "runs" / "api" / "final" / "model.safetensors").exists()


def test_defaults_table_matches_sftconfig():
    trl = pytest.importorskip("trl")
    from focusft.training.config import FocusConfig

    sft, ours = trl.SFTConfig(output_dir="x", bf16=False), FocusConfig(output_dir="x")
    value = lambda v: v.value if isinstance(v, enum.Enum) else v  # noqa: E731
    differ = {f.name: (value(getattr(sft, f.name)), value(getattr(ours, f.name)))
              for f in fields(FocusConfig)
              if f.init and hasattr(sft, f.name) and f.name not in ("output_dir", "logging_dir")
              and value(getattr(sft, f.name)) != value(getattr(ours, f.name))}
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| (.*?) \|", section("Python API"), re.M)
    assert {name for name, _, _ in rows} == set(differ)
    for name, theirs, mine in rows:
        assert (theirs, mine) == tuple(str(v) for v in differ[name]), name
