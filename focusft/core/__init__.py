"""The method: GLM masks, block-prefix attention, family knowledge, fast weights, the inner loop, the bilevel step.

Layer 1: imports only `focusft.errors` (and torch / transformers).
"""
