"""How a chat template reads message content, probed once per template, and the messages
brought to that form before rendering.

Two things vary between templates and are found by rendering small probes:

* Content parts. Rows may give ``content`` as a list of text parts
  (``[{"type": "text", "text": ...}]``, the OpenAI / Hugging Face multimodal form).
  Templates of multimodal families (Qwen3.5, Gemma 3, Llama 3.1...) read such lists
  themselves; text-only ones (Qwen3, ChatML...) render a list as nothing or as its Python repr.
  For each role a probe message is rendered once with a string and once with the same text as
  one part; the template "reads parts" for that role when both render alike (or only the part
  shows the text: a template that wants parts). There the list is passed through; elsewhere
  the text parts are joined into one string, with nothing between them, as the templates that
  read parts concatenate them.
* Tool-call turns without content. OpenAI's format writes ``"content": null`` on an assistant
  turn that only calls tools (the data pipeline drops the null, so the key is absent). A
  template that reads ``message.content`` unguarded fails on it (``'dict object' has no
  attribute 'content'``). When a probe tool-call turn without content fails to render and the
  same turn with ``"content": ""`` renders, such turns are given empty content.

``MessageForms.describe()`` says what was found and ``changes()`` what it did to a row (the data
report counts rows per change; its summary line, which training logs, names them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

ROLES = ("system", "user", "assistant", "tool")
_PROBE_TEXT = "\ue000focusft-part\ue001"
_TOOL = {"type": "function", "function": {
    "name": "lookup", "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}
_CALL = [{"type": "function", "id": "call_0", "function": {"name": "lookup", "arguments": {"word": "sun"}}}]

# render(messages, tools) -> text, or None when the template refuses the conversation
Render = Callable[[list, "list | None"], "str | None"]


def joined_text(parts: list) -> str:
    """The text of a list of text parts, concatenated."""
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict))


@dataclass(frozen=True)
class MessageForms:
    """What a template reads: the roles whose content parts it renders itself, and whether a
    tool-call turn needs ``content`` to be present."""

    parts_roles: frozenset = frozenset()
    empty_tool_call_content: bool = False

    def apply(self, messages: list[dict]) -> list[dict]:
        """The messages in the form this template reads (the same list when nothing changes)."""
        if not any(self._change(m) for m in messages):
            return messages
        return [self._adapt(m) if self._change(m) else m for m in messages]

    def _change(self, message: dict) -> bool:
        content = message.get("content")
        if isinstance(content, list):
            return message.get("role") not in self.parts_roles
        if content is None:
            return "content" in message or self._fills(message)
        return False

    def _fills(self, message: dict) -> bool:
        return self.empty_tool_call_content and message.get("role") == "assistant" \
            and bool(message.get("tool_calls"))

    def _adapt(self, message: dict) -> dict:
        content = message.get("content")
        if isinstance(content, list):
            return {**message, "content": joined_text(content)}
        rest = {key: value for key, value in message.items() if key != "content"}
        return {**rest, "content": ""} if self._fills(message) else rest

    def changes(self, messages: list[dict]) -> list[str]:
        """What ``apply`` does to these messages, for the data report: ``parts joined``,
        ``parts passed``, ``empty tool-call content``."""
        found = set()
        for message in messages:
            if isinstance(message.get("content"), list):
                found.add("parts passed" if message.get("role") in self.parts_roles else "parts joined")
            elif message.get("content") is None and self._fills(message):
                found.add("empty tool-call content")
        return sorted(found)

    def describe(self) -> dict:
        return {"content_parts": {role: "passed" if role in self.parts_roles else "joined"
                                  for role in ROLES},
                "tool_call_without_content": "empty content" if self.empty_tool_call_content
                else "as given"}


def probe_forms(render: Render) -> MessageForms:
    """Render the probes (see the module docstring) and say what the template reads."""
    roles = frozenset(role for role in ROLES if _reads_parts(render, role))
    return MessageForms(parts_roles=roles, empty_tool_call_content=_needs_content(render))


def _conversation(role: str, content, wrap) -> tuple[list[dict], list | None]:
    user = {"role": "user", "content": wrap("x")}
    answer = {"role": "assistant", "content": wrap("y")}
    if role == "system":
        return [{"role": "system", "content": content}, user, answer], None
    if role == "user":
        return [{"role": "user", "content": content}, answer], None
    if role == "assistant":
        return [user, {"role": "assistant", "content": content}], None
    calling = {"role": "assistant", "content": wrap(""), "tool_calls": _CALL}
    return [user, calling, {"role": "tool", "content": content, "tool_call_id": "call_0"}, answer], [_TOOL]


def _reads_parts(render: Render, role: str) -> bool:
    """The other messages of the probe are strings, or parts for a template that renders no
    string at all (LLaVA-NeXT's reads ``content[0]['text']``)."""
    for wrap in (lambda text: text, lambda text: [{"type": "text", "text": text}]):
        as_string = render(*_conversation(role, _PROBE_TEXT, wrap))
        as_parts = render(*_conversation(role, [{"type": "text", "text": _PROBE_TEXT}], wrap))
        if as_parts is None and as_string is None:
            continue
        if as_parts is None or as_string is None:
            return as_parts is not None and _PROBE_TEXT in as_parts
        return as_parts == as_string or (_PROBE_TEXT in as_parts and _PROBE_TEXT not in as_string)
    return False


def _needs_content(render: Render) -> bool:
    user = {"role": "user", "content": "x"}
    without = render([user, {"role": "assistant", "tool_calls": _CALL}], [_TOOL])
    with_empty = render([user, {"role": "assistant", "content": "", "tool_calls": _CALL}], [_TOOL])
    return without is None and with_empty is not None
