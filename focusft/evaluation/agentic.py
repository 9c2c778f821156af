"""Agentic long-context suite (tool use over long documents): see ``agentic_rows``."""

from __future__ import annotations

AGENTIC_TASKS = ("lookup", "compare")
