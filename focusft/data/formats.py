"""Chat rows in the formats people bring -> one canonical row: ``messages`` (+ ``tools``).

Accepted row shapes (the first whose key is present wins):

``messages``       OpenAI / TRL chat: a list of ``{role, content}`` with roles system, user,
                   assistant, tool; ``content`` a string or a list of text parts
                   (``[{"type": "text", "text": ...}]``; other parts are refused); ``tool_calls``
                   on assistant messages (``arguments`` a dict or
                   a JSON string, kept as given), optional ``reasoning_content``; an optional
                   ``tools`` list (or that list as a JSON string). An assistant message's
                   ``weight`` (OpenAI fine-tuning format) is 1 (trained, the default) or 0
                   (kept as context, not trained).
``conversations``  ShareGPT / LLaMA-Factory: a list of ``{from, value}``; ``from`` maps
                   human/user -> user, gpt/assistant/chatgpt -> assistant, system -> system,
                   function_call -> an assistant message whose ``tool_calls`` are the value's
                   JSON (``{"name", "arguments"}`` or a list of them), observation/tool/function
                   -> tool. Top-level ``system`` (a string) becomes the first message and
                   ``tools`` (a list or JSON string) the tools. A turn's ``weight`` is kept.
``instruction``    Alpaca: ``[system] + history pairs + user(instruction + "\n" + input) +
                   assistant(output)``; ``input``, ``system`` and ``history`` (a list of
                   ``[user, assistant]`` pairs) are optional, ``output`` is required.
``prompt``         TRL prompt/completion: strings (one user / one assistant message) or lists of
                   messages.

Every other field of the row is kept (e.g. ``evidence`` for diagnostics). Any problem raises
``UserError`` naming the row's location (``file line N``), the field and what was expected.
"""

from __future__ import annotations

import json
from typing import Any

from focusft.errors import UserError

ALLOWED_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system", "function_call": "assistant",
                  "observation": "tool", "tool": "tool", "function": "tool"}
FORMAT_KEYS = ("messages", "conversations", "instruction", "prompt")


def row_and_where(row: dict, default_where: str) -> tuple[dict, str]:
    """A row as ``load_rows`` stores it (JSON + location) or as given, with its location."""
    if isinstance(row.get("row"), str) and "messages" not in row:
        return json.loads(row["row"]), row.get("where") or default_where
    return row, default_where


def canonical(row: dict, where: str) -> dict:
    """The row with its conversation as ``messages`` (other fields kept); see the module docstring."""
    if row.get("messages") is not None or "messages" in row:
        return row
    if row.get("conversations") is not None:
        rest = {k: v for k, v in row.items() if k not in ("conversations", "system", "tools")}
        messages = _from_sharegpt(row["conversations"], row.get("system"), where)
        return {**rest, "messages": messages, **({"tools": row["tools"]} if row.get("tools") else {})}
    if row.get("instruction") is not None:
        rest = {k: v for k, v in row.items() if k not in ("instruction", "input", "output", "system", "history")}
        return {**rest, "messages": _from_alpaca(row, where)}
    return row


def normalize_row(row: dict, where: str) -> tuple[list[dict], list | None]:
    """Return ``(messages, tools)`` for one row of any accepted shape; ``where`` (e.g.
    "data.jsonl line 17") prefixes errors."""
    row, where = row_and_where(row, where)
    row = canonical(row, where)
    if row.get("messages") is not None:
        messages = _check_messages(row["messages"], where, "messages")
    elif row.get("prompt") is not None:
        messages = _prompt_completion(row, where)
    elif "messages" in row or "prompt" in row:
        field = "messages" if "messages" in row else "prompt"
        raise UserError(f"{where}: field '{field}' is null; expected a conversation.")
    else:
        raise UserError(
            f"{where}: no 'messages' or 'prompt' field (nor 'conversations' or 'instruction'); the "
            f"row has columns {sorted(row)}. Expected 'messages' (a list of {{role, content}}), "
            "'conversations' (ShareGPT), 'instruction' + 'output' (Alpaca) or 'prompt' + 'completion'."
        )
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        raise UserError(f"{where}: field 'messages' has no assistant turn (with weight 1), so "
                        "nothing to train on.")
    return messages, _check_tools(row.get("tools"), where)


def _prompt_completion(row: dict, where: str) -> list[dict]:
    """A string side becomes one user/assistant message; a list side is TRL's conversational form."""
    if row.get("completion") is None:
        raise UserError(f"{where}: field 'prompt' is present but 'completion' is missing or null.")
    prompt = _side(row["prompt"], "user", where, "prompt")
    completion = _side(row["completion"], "assistant", where, "completion")
    return prompt + completion


def _side(value: Any, role: str, where: str, field: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _check_messages(value, where, field)
    raise UserError(
        f"{where}: field '{field}' must be a string or a list of messages, got {type(value).__name__}."
    )


def _check_messages(messages: Any, where: str, field: str) -> list[dict]:
    if not isinstance(messages, list):
        raise UserError(
            f"{where}: field '{field}' must be a list of {{role, content}} messages, "
            f"got {type(messages).__name__}."
        )
    return [_check_message(m, where, f"{field}[{i}]") for i, m in enumerate(messages)]


def _check_message(message: Any, where: str, field: str) -> dict:
    if not isinstance(message, dict):
        raise UserError(
            f"{where}: {field} must be a dict with 'role' and 'content', got {type(message).__name__}."
        )
    # Columnar formats give every message every key seen in the column, with None where absent;
    # None therefore means "absent", and templates test presence (`if message.tool_calls`).
    message = {key: value for key, value in message.items() if value is not None}
    role = message.get("role")
    if role not in ALLOWED_ROLES:
        raise UserError(f"{where}: {field}.role is {role!r}; allowed roles: {', '.join(ALLOWED_ROLES)}.")
    content = message.get("content")
    if content is None and not (role == "assistant" and message.get("tool_calls")):
        raise UserError(
            f"{where}: {field}.content is missing or null; only an assistant message with "
            "'tool_calls' may omit it."
        )
    if isinstance(content, list):
        message["content"] = check_parts(content, where, f"{field}.content")
    elif content is not None and not isinstance(content, str):
        raise UserError(f"{where}: {field}.content must be a string or a list of text parts, got "
                        f"{type(content).__name__}.")
    if "weight" in message:
        _check_weight(message, where, field)
    return message


def check_parts(parts: list, where: str, field: str) -> list[dict]:
    """Content given as parts (OpenAI / Hugging Face style): ``[{"type": "text", "text": ...}]``.
    Text parts are kept (null-valued keys dropped, as columnar formats add them); any other part
    (image, audio, file...) is refused: the models trained here read text only."""
    out = []
    for j, part in enumerate(parts):
        if isinstance(part, dict):
            part = {key: value for key, value in part.items() if value is not None}
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(part)
            continue
        if kind == "text":
            problem = f"is a text part whose 'text' is {type(part.get('text')).__name__}, not a string"
        elif isinstance(kind, str):
            problem = f"is a part of type {kind!r}"
        else:
            problem = f"has no 'type' ({part!r:.60})"
        raise UserError(
            f"{where}: {field}[{j}] {problem}; only text parts ({{\"type\": \"text\", \"text\": "
            "...}) can be trained (the model reads text only). Remove the part, or give its "
            "content as text.")
    return out


def _check_weight(message: dict, where: str, field: str) -> None:
    weight = message["weight"]
    if message["role"] != "assistant":
        raise UserError(f"{where}: {field}.weight is given on a {message['role']} message; only "
                        "assistant messages carry a weight (1: trained, 0: context).")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise UserError(f"{where}: {field}.weight is {weight!r}; expected 0 (context) or 1 (trained).")


def _check_tools(tools: Any, where: str) -> list | None:
    """Tools may be a list of JSON schemas or that list serialized as a JSON string."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: field 'tools' is a string but not valid JSON ({exc.msg}).") from exc
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise UserError(f"{where}: field 'tools' must be a list of tool schemas, got {type(tools).__name__}.")
    # An empty list would make some templates render an empty tools section.
    return tools or None


def _from_sharegpt(turns: Any, system: Any, where: str) -> list[dict]:
    if not isinstance(turns, list):
        raise UserError(f"{where}: field 'conversations' must be a list of {{from, value}} turns, "
                        f"got {type(turns).__name__}.")
    messages = []
    if system is not None:
        if not isinstance(system, str):
            raise UserError(f"{where}: field 'system' must be a string, got {type(system).__name__}.")
        if system:
            messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        messages.append(_sharegpt_turn(turn, where, f"conversations[{i}]"))
    return messages


def _sharegpt_turn(turn: Any, where: str, field: str) -> dict:
    if not isinstance(turn, dict) or "from" not in turn:
        raise UserError(f"{where}: {field} must be a dict with 'from' and 'value', got "
                        f"{turn!r:.80}.")
    source, value = turn["from"], turn.get("value")
    if source not in SHAREGPT_ROLES:
        raise UserError(f"{where}: {field}.from is {source!r}; allowed: {', '.join(SHAREGPT_ROLES)}.")
    if not isinstance(value, str):
        raise UserError(f"{where}: {field}.value must be a string, got {type(value).__name__}.")
    extra = {k: v for k, v in turn.items() if k not in ("from", "value")}
    if source == "function_call":
        return {"role": "assistant", "tool_calls": _calls_from_json(value, where, field), **extra}
    return {"role": SHAREGPT_ROLES[source], "content": value, **extra}


def _calls_from_json(value: str, where: str, field: str) -> list[dict]:
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: {field}.value of a function_call turn must be JSON "
                        f'{{"name": ..., "arguments": ...}} ({exc.msg}).') from exc
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise UserError(f"{where}: {field}.value: each function call needs a string 'name' "
                            f"and 'arguments', got {call!r:.80}.")
        out.append({"type": "function", "function": {"name": call["name"],
                                                     "arguments": call.get("arguments", {})}})
    return out


def _from_alpaca(row: dict, where: str) -> list[dict]:
    for name in ("instruction", "output"):
        if not isinstance(row.get(name), str):
            raise UserError(f"{where}: field '{name}' must be a string (Alpaca format: instruction, "
                            f"optional input, output), got {type(row.get(name)).__name__}.")
    for name in ("input", "system"):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise UserError(f"{where}: field '{name}' must be a string, got {type(row[name]).__name__}.")
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for i, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise UserError(f"{where}: history[{i}] must be a [user, assistant] pair of strings, "
                            f"got {pair!r:.80}.")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
