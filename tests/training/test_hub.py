"""Hub-ready output: what push_to_hub would upload, the model card, focusft.yaml as --config.

No network: the Hub client is replaced by a recorder that lists, at the moment of each call,
the files `upload_folder` would send (huggingface_hub's own pattern filter).
"""

import concurrent.futures
import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub.utils import filter_repo_objects
from transformers import Trainer

from chat_fixtures import save_chat_model
from focusft.training import model_card as card_module
from focusft.cli import main
from focusft.training.config import parse_config

ROWS = [{"messages": [{"role": "user", "content": f"The cat sat on mat number {i}. Where is the cat?"},
                      {"role": "assistant", "content": f"On mat {i}."}]} for i in range(4)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    save_chat_model(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


def train(root, out, *extra):
    code = main(["train", "--model", str(root / "model"), "--data", str(root / "train.jsonl"),
                 "--eval_data", str(root / "train.jsonl"), "--eval_strategy", "steps",
                 "--eval_steps", "2", "--eval_inner_loop", "true", "--output_dir", str(out), "--max_steps", "2",
                 "--per_device_train_batch_size", "2", "--fast_rank", "4", "--max_length", "128",
                 "--disable_tqdm", "true", *extra])
    assert code == 0
    return out


def would_upload(folder, ignore_patterns=None) -> list[str]:
    files = [p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()]
    return list(filter_repo_objects(files, ignore_patterns=ignore_patterns))


class RecordingHub:
    def __init__(self):
        self.uploads = []

    def upload_folder(self, folder_path, ignore_patterns=None, path_in_repo=None, **kwargs):
        self.uploads.append((folder_path, would_upload(folder_path, ignore_patterns)))
        done = concurrent.futures.Future()
        done.set_result(None)
        return done


def test_push_to_hub_never_sends_staging_or_temp_folders(setup, monkeypatch):
    import transformers.trainer

    hub = RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    def init_repo(self, **kwargs):  # what Trainer.init_hf_repo sets, without creating a repo
        self.hub_model_id, self.push_in_progress = "me/tiny", None

    monkeypatch.setattr(Trainer, "init_hf_repo", init_repo)
    out = setup / "pushed"
    mid_save = []
    original_save = Trainer._save_optimizer_and_scheduler
    original_card = card_module.model_card

    def during_checkpoint(self, output_dir):
        original_save(self, output_dir)  # optimizer.pt now sits in the staging folder
        mid_save.append((sorted(p.name for p in out.iterdir()), would_upload(out, ["_*", "checkpoint-*"])))

    def during_final(*args):
        mid_save.append((sorted(p.name for p in out.iterdir()), would_upload(out, ["_*", "checkpoint-*"])))
        return original_card(*args)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", during_checkpoint)
    monkeypatch.setattr(card_module, "model_card", during_final)
    train(setup, out, "--save_strategy", "steps", "--save_steps", "1", "--push_to_hub", "true",
          "--hub_model_id", "me/tiny")
    assert len(mid_save) == 3  # two checkpoints and the final save
    assert all(any(name.startswith("_") for name in names) for names, _ in mid_save)
    for _, files in mid_save:
        assert not any(f.startswith(("_", "checkpoint-")) or "optimizer.pt" in f for f in files)
    for folder, files in hub.uploads:
        assert not any("_staging" in f or "_final" in f or "optimizer.pt" in f for f in files), files
    final_folder, final_files = hub.uploads[-1]  # the last upload is final/ as the repo root
    assert Path(final_folder) == out / "final"
    assert {"README.md", "focusft.yaml", "model.safetensors", "config.json"} <= set(final_files)


def test_model_card_and_config_round_trip(setup):
    out = train(setup, setup / "card", "--report_to", "none", "--accelerator_config",
                '{"split_batches": true}', "--fast_target_modules", "up_proj", "down_proj")
    final = out / "final"
    text = (final / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == str(setup / "model") and meta["library_name"] == "transformers"
    assert "FocuSFT (K = 2 inner steps, glm mask)" in text and str(setup / "train.jsonl") in text
    result = json.loads((out / "result.json").read_text())
    assert f"| `train_loss` | {result['train_loss']} |" in text and "| `eval_focus_loss` |" in text
    assert "AutoModelForCausalLM.from_pretrained" in text
    written = yaml.safe_load((final / "focusft.yaml").read_text())
    assert written["report_to"] == [] and written["accelerator_config"]["split_batches"] is True
    assert not any(k.endswith("_token") for k in written)  # secrets never written
    again = parse_config(["--config", str(final / "focusft.yaml")])
    original = parse_config(["--model", str(setup / "model"), "--output_dir", str(out),
                             "--accelerator_config", '{"split_batches": true}',
                             "--fast_target_modules", "up_proj", "down_proj"])
    assert again.fast_target_modules == ["up_proj", "down_proj"] and again.report_to == []
    assert again.accelerator_config.split_batches is True
    assert again.to_yaml() == parse_config(["--config", str(final / "focusft.yaml")]).to_yaml()
    assert again.model == original.model and again.max_steps == 2 and again.eval_steps == 2
