"""The data pipeline: data files and row formats, chat templates and loss masks, tokenizing, inspection.

Layer 3: imports `focusft.sources`, `focusft.core` and `focusft.errors`.
"""
