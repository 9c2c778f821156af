"""Fixtures for the evaluation tests (helpers live in eval_helpers.py: unique module name)."""

from __future__ import annotations

import pytest
from eval_helpers import make_test_tokenizer
from transformers import PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_test_tokenizer()
