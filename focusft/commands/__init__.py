"""The `focusft` sub-commands, one module each (`focusft.cli` dispatches to them): thin parsers.

Layer 8, the top: imports any layer below; nothing in the package imports it.
"""
