"""The trainer: FocusConfig, FocusTrainer, what it accepts, the `focusft train` run, PEFT, faults, model card.

Layer 6: imports `focusft.diagnostics`, `focusft.evaluation`, `focusft.data`, `focusft.sources`, `focusft.core`.
"""
