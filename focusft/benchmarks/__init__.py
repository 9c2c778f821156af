"""Benchmarks: what a step, a tokenizer, an evaluation or a mask costs, measured (`focusft bench`,
``python -m focusft.benchmarks.<name>``), and the prepared GPU check (`scripts/gpu_check.sh`).

May import every layer below it (core, sources, data, evaluation, diagnostics, training); nothing
imports it but the command line.
"""
