"""Rendering a sample for generation: chat template (or none), then the answer prefix.

Contract, for a row whose ``messages`` end with the assistant's training answer:

  chat_template=True   ``tokenizer.apply_chat_template(context + [assistant: prefix],
                       continue_final_message=True)`` when the row has an answer prefix (the
                       assistant turn is opened and pre-filled with it, as lm-eval does with
                       ``gen_prefix``), else ``apply_chat_template(context,
                       add_generation_prompt=True)``; ``tools`` are passed through. ``context``
                       is every message before the final assistant turn.
  chat_template=False  the contents of the context messages concatenated (a base model's
                       input, RULER's default), then ``join_prefix`` with the answer prefix.

Generation continues from the returned text. ``frame_tokens`` is what the chat template adds
around one user message (RULER lengths count it); ``continuation`` is the text a model that
reproduces the training answer would generate after the rendered prompt.
"""

from __future__ import annotations

from focusft.evaluation.prompt_sets import join_prefix


def context_messages(messages: list[dict]) -> list[dict]:
    """The messages before the final assistant turn (all of them if it is missing)."""
    if messages and messages[-1]["role"] == "assistant":
        return list(messages[:-1])
    return list(messages)


def generation_text(tokenizer, messages: list[dict], answer_prefix: str = "",
                    chat_template: bool = True, tools: list | None = None) -> str:
    context = context_messages(messages)
    if not chat_template:
        return join_prefix("".join(m.get("content") or "" for m in context), answer_prefix)
    kwargs = {"tools": tools} if tools else {}
    if answer_prefix:
        return tokenizer.apply_chat_template(
            context + [{"role": "assistant", "content": answer_prefix.strip()}], tokenize=False,
            continue_final_message=True, **kwargs)
    return tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True,
                                         **kwargs)


def continuation(messages: list[dict], answer_prefix: str = "") -> str:
    """The final assistant answer after its answer prefix (what generation should produce)."""
    answer = messages[-1]["content"]
    prefix = answer_prefix.strip()
    if not answer.startswith(prefix):
        raise ValueError(f"the answer {answer[:60]!r} does not start with its prefix {prefix!r}")
    return answer[len(prefix):]


def frame_tokens(tokenizer, chat_template: bool = True) -> int:
    """Tokens the chat template adds around a user message and the assistant header."""
    if not chat_template or tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return 0
    probe = "hello"
    text = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False,
                                         add_generation_prompt=True)
    count = lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    return max(0, count(text) - count(probe))
