"""Where models and tokenizers come from: checked model directories and the embedded default.

Layer 2: imports `focusft.core` and `focusft.errors`.
"""
