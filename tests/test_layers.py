"""The package's layering holds: no import circle, no import from a lower layer up, every module
in a layer, small modules, and docs/architecture.md's picture is the code's (tests/layers.py)."""

from pathlib import Path

import layers

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_circles():
    assert layers.cycles(layers.import_graph()) == []


def test_no_upward_imports():
    assert layers.upward_imports(layers.import_graph()) == []


def test_every_module_is_in_a_layer():
    assert [m for m in layers.modules() if m != "focusft" and layers.layer_of(m) is None] == []


def test_the_checker_sees_circles_and_upward_arrows():
    graph = {"focusft.core.a": {"focusft.training.t"}, "focusft.training.t": {"focusft.core.a"},
             "focusft.data.d": {"focusft.errors"}}
    assert layers.cycles(graph) == [["focusft.core.a", "focusft.training.t"]]
    assert layers.upward_imports(graph) == ["focusft.core.a -> focusft.training.t"]


def test_modules_stay_small():
    big = {m: n for m, p in layers.modules().items()
           if (n := len(p.read_text().splitlines())) > 520}
    assert big == {}


def test_each_layer_says_what_it_is_and_may_import():
    for prefix in layers.LAYERS:
        path = ROOT / prefix.replace(".", "/")
        init = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        doc = init.read_text().split('"""')[1]
        assert doc.strip(), init
        if path.is_dir():
            assert "import" in doc, f"{init}: the docstring should say what the layer may import"


def test_architecture_doc_draws_the_code():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert layers.mermaid(layers.import_graph()) in doc, "regenerate: python tests/layers.py"
