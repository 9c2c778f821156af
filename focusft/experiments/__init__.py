"""Experiments and their reports: SFT vs FocuSFT runs, generated SFT tasks, benchmarks.

Layer 7: imports every layer below it (`focusft.training` and down); nothing imports it but the commands.
"""
