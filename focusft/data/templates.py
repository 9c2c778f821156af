"""Chat template -> rendered text R + assistant character spans S -> token loss mask.

A ``ChatEncoder`` renders a conversation with the tokenizer's chat template, finds the character
spans of R that the assistant wrote, tokenizes R once with offsets and sets

    loss_mask[t] = 1  iff  token t's characters [s_t, e_t) overlap some span [a, b)

(``s_t < b and e_t > a``: the rule of transformers' ``return_assistant_tokens_mask``, so a
token cut by a span edge is trained). The spans come from one of three rules, chosen once per
template (``ChatEncoder.rule``) and reported by the data pipeline:

``generation``  the template marks assistant output with ``{% generation %}``: the spans are
    transformers' generation indices of one render. What the template author put inside the
    markers is trained.
``prefix``      the template renders each turn the same whatever follows it. For assistant
    message i, ``P_i = render(m[:i], add_generation_prompt=True)`` and ``F_i = render(m[:i+1])``
    are prefixes of R and ``S_i = [len(P_i), len(rstrip(F_i)))``: the content, tool calls and
    end-of-turn marker, without the header (inside ``P_i``) or the layout whitespace after it.
    2 renders per assistant turn.
``located``     the template rewrites history (Qwen3 drops ``<think>`` from earlier turns and
    adds an empty one to the last; DeepSeek-R1 distills, GLM-4, gpt-oss channels, Phi-3's
    final eos). R is rendered once; for assistant message i, ``R^i`` is R with that message
    replaced by ``{role: assistant, content: SENTINEL}``. Where R and ``R^i`` differ,
    ``[a, e)`` (longest common prefix / suffix), is what message i rendered to. The span starts
    after the last assistant header H (the template's generation prompt) that ends at or before
    a, and ends at e, extended over the end-of-turn marker that follows (the first special
    token after an assistant turn, read off the template), and never reaches into the next
    message's content. 1 render per assistant turn.
    A template that the prefix probe accepts but that rewrites a particular row gets the
    ``located`` rule for that row (counted in the data report).

An assistant message with ``weight: 0`` (OpenAI fine-tuning format) is rendered but not trained.

Reasoning. Reasoning the user supplied (``reasoning_content``, ``thinking`` or ``reasoning``;
transformers aliases them) is trained in the turn where the template renders it, and not where
the template drops it (Qwen3's earlier turns): only what R contains can be trained. An *empty*
think block at the start of a span (``<think>`` + whitespace + ``</think>`` + whitespace: what
Qwen3-style templates inject into a turn without reasoning) is context, not trained, unless
``empty_think_loss`` (``--empty_think_loss true``) asks to train it too.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jinja2

from focusft.errors import UserError
from focusft.data.message_forms import MessageForms, probe_forms
from focusft.data.template_diff import common_prefix, common_suffix, regions_at_once, sentinel

RULES = ("generation", "prefix", "located")
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
EMPTY_THINK = re.compile(r"\s*<think>\s*</think>\s*")
_PREFILLED_THINK = re.compile(r"<think>\s*(</think>\s*)?$")
SENTINEL = "\ue000focusft\ue001"
_PROBE_TOOL = {"type": "function", "function": {
    "name": "lookup", "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}
_PROBE_CALL = [{"type": "function", "id": "call_0",
                "function": {"name": "lookup", "arguments": {"word": "sun"}}}]


class _NotPrefix(Exception):
    """The template rewrote an earlier turn: the prefix rule does not apply to this row."""


def template_has_generation_markers(template: str) -> bool:
    return bool(GENERATION_TAG.search(template or ""))


class ChatEncoder:
    """Tokenize conversations with a tokenizer's chat template; see the module docstring."""

    def __init__(self, tokenizer: Any, empty_think_loss: bool = False, rule: str | None = None):
        """``rule`` forces a rule (benchmarks and tests); by default the template's own is chosen."""
        self.tokenizer = tokenizer
        self.empty_think_loss = empty_think_loss
        self.template = getattr(tokenizer, "chat_template", None)
        self.rule = None
        self.forms = MessageForms()
        if isinstance(self.template, str) and self.template:
            self.specials = sorted({str(t) for t in tokenizer.added_tokens_decoder.values()}, key=len,
                                   reverse=True)
            self.header = self._header()
            self.footers = self._footers()
            self.stops = self.footers + self._tool_call_stop()
            self.rule = rule or self._choose_rule()
            self.forms = probe_forms(lambda messages, tools: self._probe(messages, tools))
            self.at_once = self.rule != "generation" and self._at_once_agrees()

    # ---------------------------------------------------------------------------- per row

    def encode(self, messages: list[dict], tools: list | None = None, where: str = "conversation"
               ) -> tuple[list[int], list[int], str]:
        """``(input_ids, loss_mask, rule used)`` for one conversation."""
        self.check_tokenizer(where)
        text, spans, rule = self.spans(messages, tools, where)
        ids, offsets = self._tokenize(text)
        return ids, overlap_mask(offsets, spans), rule

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and char offsets of ``text``, as ``tokenizer(text, add_special_tokens=False)``.
        The `tokenizers` backend is called directly when it has no truncation or padding of its
        own to apply (a third of the cost at 64 turns is the Python wrapper otherwise)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            encoding = backend.encode(text, add_special_tokens=False)
            return encoding.ids, encoding.offsets
        encoded = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False,
                                 verbose=False)
        return list(encoded["input_ids"]), encoded["offset_mapping"]

    def spans(self, messages: list[dict], tools: list | None, where: str
              ) -> tuple[str, list[tuple[int, int]], str]:
        """The rendered text, the trained character spans in it, and the rule that found them."""
        messages = self.forms.apply(messages)
        rule = self.rule
        spans = None
        if rule == "generation":
            text, spans = self._render_marked(messages, tools, where)
            spans = _weighted(spans, messages)
            rule = rule if spans is not None else "prefix"
        if spans is None:
            text = self._render(messages, tools, False, where)
            if rule == "prefix":
                try:
                    spans = self._prefix_spans(messages, tools, text, where)
                except _NotPrefix:
                    rule = "located"
            if spans is None:
                spans = self._located_spans(messages, tools, text, where)
        if not self.empty_think_loss:
            spans = [_cut_empty_think(text, span) for span in spans]
        return text, [(a, b) for a, b in spans if b > a], rule

    def check_tokenizer(self, where: str) -> None:
        if self.rule is None:
            raise UserError(
                f"{where}: the tokenizer has no chat_template; use an instruct/chat model's tokenizer "
                "or set tokenizer.chat_template.")
        if not getattr(self.tokenizer, "is_fast", False):
            # Offsets (char -> token alignment) exist only for tokenizers backed by `tokenizers`.
            raise UserError(f"{where}: the tokenizer must be a fast tokenizer (offset mapping is needed).")

    # ---------------------------------------------------------------------------- the rules

    def _render_marked(self, messages, tools, where) -> tuple[str, list[tuple[int, int]]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            texts, indices = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=self.template,
                return_assistant_tokens_mask=True, add_generation_prompt=False,
                **self.tokenizer.special_tokens_map)
        except (jinja2.TemplateError, TypeError, ValueError) as exc:
            raise _template_error(where, messages, exc) from exc
        return texts[0], [tuple(span) for span in indices[0]]

    def _prefix_spans(self, messages, tools, full, where) -> list[tuple[int, int]]:
        spans = []
        for i, message in enumerate(messages):
            if not _trained(message):
                continue
            through = self._render(messages[: i + 1], tools, False, where)
            prefix = self._render(messages[:i], tools, True, where) if i \
                else self._opening_header(message, tools, where)
            if not (full.startswith(through) and full.startswith(prefix)):
                raise _NotPrefix
            prefill = _PREFILLED_THINK.search(prefix)  # `<think>\n` pre-filled by the prompt
            start = prefill.start() if prefill else len(prefix)
            spans.append((start, len(through.rstrip())))
        return spans

    def _opening_header(self, message, tools, where) -> str:
        """What the template writes before the content of an assistant turn that opens the chat
        (templates refuse to render an empty conversation, so P_0 cannot be rendered)."""
        marked = self._render([{**message, "content": SENTINEL}], tools, False, where)
        return marked[:max(0, marked.find(SENTINEL))]

    def _located_spans(self, messages, tools, full, where) -> list[tuple[int, int]]:
        spans, cursor = [], 0
        regions = self._regions_at_once(messages, tools, full, where) if self.at_once else None
        if regions is None:
            regions = self._regions_one_by_one(messages, tools, full, where)
        for i, a, e in regions:
            start = a
            if self.header:
                at = full.rfind(self.header, cursor, a)
                start = at + len(self.header) if at >= 0 else a
            limit = self._next_start(messages, i, tools, full, where, start, max(e, start))
            end = self._turn_end(full, start, e, limit)
            spans.append((start, max(end, start)))
            cursor = max(cursor, end)
        return spans

    def _regions_one_by_one(self, messages, tools, full, where) -> list[tuple[int, int, int]]:
        """``(i, a, e)`` per trained assistant message i: where R changes when message i alone
        is swapped for a sentinel (one render per message)."""
        regions = []
        for i, message in enumerate(messages):
            if not _trained(message):
                continue
            marked = self._marked(messages, i, tools, where)
            if marked == full:  # nothing in R depends on this message (the template dropped it)
                continue
            a = common_prefix(full, marked)
            e = len(full) - common_suffix(full, marked, min(len(full), len(marked)) - a)
            regions.append((i, a, e))
        return regions

    def _regions_at_once(self, messages, tools, full, where) -> list[tuple[int, int, int]] | None:
        """The same regions from one render with every trained assistant message swapped for its
        own sentinel (``focusft.data.template_diff``); None where that render cannot stand in for the
        per-message ones."""
        trained = [i for i, message in enumerate(messages) if _trained(message)]
        swapped = list(messages)
        for k, i in enumerate(trained):
            swapped[i] = {"role": "assistant", "content": sentinel(k)}
        try:
            marked = self._render(swapped, tools, False, where)
        except UserError:
            return None  # e.g. gpt-oss: a tool result needs the call before it (see _marked)
        needles = [_first_text(messages[i + 1:j]) for i, j in zip(trained, trained[1:])]
        found = regions_at_once(full, marked, [sentinel(k) for k in range(len(trained))], needles)
        return None if found is None else [(i, a, e) for i, (a, e) in zip(trained, found)]

    def _marked(self, messages, i, tools, where) -> str:
        """R with messages[i] replaced by a sentinel turn; a template that needs the tool call
        structure (gpt-oss names tool results after the call) keeps the calls, without arguments."""
        stand_in = {"role": "assistant", "content": SENTINEL}
        try:
            return self._render(messages[:i] + [stand_in] + messages[i + 1:], tools, False, where)
        except UserError:
            if not messages[i].get("tool_calls"):
                raise
        calls = [_blank_arguments(call) for call in messages[i]["tool_calls"]]
        stand_in = {"role": "assistant", "content": "", "tool_calls": calls}
        return self._render(messages[:i] + [stand_in] + messages[i + 1:], tools, False, where)

    def _next_start(self, messages, i, tools, full, where, start: int, region_end: int) -> int:
        """Where the next non-assistant message's content starts in R. A text search is enough
        when its first hit lies past message i's region; otherwise (the content also occurs
        inside the region, or the template renders it inside the model's turn) R is compared
        with R where that content is swapped for a sentinel."""
        j = next((k for k in range(i + 1, len(messages)) if messages[k]["role"] != "assistant"
                  and _first_text(messages[k:k + 1]) is not None), None)
        if j is None:
            return len(full)
        needle = _first_text(messages[j:j + 1])
        hit = full.find(needle, start) if needle else -1
        if hit >= region_end and not self._in_special(full, hit, len(needle)):
            return hit
        swapped = {**messages[j], "content": SENTINEL}
        marked = self._render(messages[:j] + [swapped] + messages[j + 1:], tools, False, where)
        return common_prefix(full, marked)

    def _in_special(self, text: str, at: int, n: int) -> bool:
        """Whether ``text[at:at+n]`` overlaps a special token (a needle such as ``<`` found inside
        ``<|im_end|>`` is not the message)."""
        return any(text.find(s, max(0, at - len(s) + 1), at + n + len(s) - 1) >= 0
                   for s in self.specials)

    def _turn_end(self, text: str, start: int, end: int, limit: int) -> int:
        """The turn's own end-of-turn token after ``end``; else ``end``, but never past the last
        end-of-turn token before ``limit`` (where the next message's content starts): a template
        that renders a tool result inside the model's turn must not have it trained."""
        after = [text.find(t, end, limit + len(t) - 1) + len(t) for t in self.stops
                 if text.find(t, end, limit + len(t) - 1) >= 0]
        if after:
            return min(after)
        before = [text.rfind(t, start, limit) + len(t) for t in self.stops if text.rfind(t, start, limit) >= 0]
        return min(end, max(before, default=limit))

    # ---------------------------------------------------------------------------- probes

    def _probe(self, messages, tools=None, gen=False) -> str | None:
        try:
            return self._render(messages, tools, gen, "probe")
        except UserError:
            return None

    def _header(self) -> str | None:
        """The generation prompt, without a think block the template pre-fills into it."""
        user = [{"role": "user", "content": "x"}]
        plain, prompted = self._probe(user), self._probe(user, gen=True)
        if plain is None or prompted is None or not prompted.startswith(plain):
            return None
        return _PREFILLED_THINK.sub("", prompted[len(plain):]) or None

    def _footers(self) -> tuple[str, ...]:
        """The special token right after an assistant turn's text: last turn and earlier turn."""
        found = set()
        for tail in ([], [{"role": "user", "content": "y"}]):
            text = self._probe([{"role": "user", "content": "x"},
                                {"role": "assistant", "content": SENTINEL}] + tail)
            if text and SENTINEL in text:
                after = text[text.index(SENTINEL) + len(SENTINEL):]
                special = next((s for s in self.specials if after.startswith(s)), None)
                if special:
                    found.add(special)
        return tuple(sorted(found, key=len, reverse=True))

    def _tool_call_stop(self) -> tuple[str, ...]:
        """Stop tokens of a tool-calling turn: the special token a final tool-calling turn ends
        with (Gemma's ``<|tool_response>``, gpt-oss' ``<|call|>``) and, for a template without
        an end-of-turn token there, the role token that opens the tool result (GLM-4's
        ``<|observation|>``, the token such a model stops on)."""
        user = {"role": "user", "content": "x"}
        calling = {"role": "assistant", "content": "", "tool_calls": _PROBE_CALL}
        alone = (self._probe([user, calling], [_PROBE_TOOL]) or "").rstrip()
        found = [s for s in self.specials if alone.endswith(s)][:1]
        answered = self._probe([user, calling, {"role": "tool", "content": SENTINEL}], [_PROBE_TOOL])
        if alone and answered and not any(alone.endswith(f) for f in self.footers):
            rest = answered[common_prefix(alone, answered):]
            opener = next((s for s in self.specials if rest.startswith(s)), None)
            if opener and not (self.header or "").startswith(opener):
                found.append(opener)
        return tuple(s for s in dict.fromkeys(found) if s not in self.footers)

    def _at_once_agrees(self) -> bool:
        """Whether one render with every assistant turn swapped finds the regions that one
        render per turn finds, on the probe conversations the template renders."""
        self.at_once = True
        for messages, tools in _probe_conversations():
            full = self._probe(messages, tools)
            if full is None:
                continue
            try:
                if self._regions_at_once(messages, tools, full, "probe") not in (
                        None, self._regions_one_by_one(messages, tools, full, "probe")):
                    return False
            except UserError:
                continue
        return True

    def _choose_rule(self) -> str:
        if template_has_generation_markers(self.template):
            return "generation"
        for messages, tools in _probe_conversations():
            try:
                self._prefix_spans(messages, tools, self._render(messages, tools, False, "probe"), "probe")
            except _NotPrefix:
                return "located"
            except UserError:
                continue  # the template refuses this shape (e.g. no tool role): try the next
        return "prefix"

    def _render(self, messages, tools, gen_prompt: bool, where: str) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=gen_prompt)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise _template_error(where, messages, exc) from exc


def _probe_conversations() -> list[tuple[list[dict], list | None]]:
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    plain = [user("a?"), {"role": "assistant", "content": "A."}, user("b?"),
             {"role": "assistant", "content": "B."}]
    reasoning = [user("a?"), {"role": "assistant", "content": "A.", "reasoning_content": "r1"},
                 user("b?"), {"role": "assistant", "content": "B.", "reasoning_content": "r2"}]
    tool = [user("a?"), {"role": "assistant", "content": "", "tool_calls": _PROBE_CALL},
            {"role": "tool", "content": "hot", "tool_call_id": "call_0"},
            {"role": "assistant", "content": "Hot."}, user("b?"), {"role": "assistant", "content": "B."}]
    return [(plain, None), (reasoning, None), (tool, [_PROBE_TOOL])]


def _first_text(messages: list[dict]) -> str | None:
    """The stripped text of the first non-assistant message (its first text part), if any."""
    for message in messages:
        if message["role"] != "assistant":
            content = message.get("content")
            if isinstance(content, list):
                content = next((p.get("text") for p in content if isinstance(p, dict)), None)
            return content.strip() if isinstance(content, str) else None
    return None


def _trained(message: dict) -> bool:
    """An assistant message is trained unless its OpenAI-format ``weight`` is 0."""
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def _weighted(spans: list, messages: list[dict]) -> list | None:
    """Generation blocks of weight-1 messages; None when blocks and assistant messages cannot be
    paired one to one (the per-turn rules then find the spans of the weighted messages)."""
    assistants = [m for m in messages if m["role"] == "assistant"]
    if all(_trained(m) for m in assistants):
        return spans
    if len(spans) != len(assistants):
        return None
    return [span for span, m in zip(spans, assistants) if _trained(m)]


def _blank_arguments(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    if isinstance(call.get("function"), dict):
        return {**call, "function": {**call["function"], "arguments": {SENTINEL: SENTINEL}}}
    return {**call, "arguments": {SENTINEL: SENTINEL}}


def _template_error(where: str, messages: list, exc: Exception) -> UserError:
    return UserError(f"{where}: the chat template failed on this conversation "
                     f"({len(messages)} messages): {type(exc).__name__}: {exc}")


def _cut_empty_think(text: str, span: tuple[int, int]) -> tuple[int, int]:
    start, end = span
    match = EMPTY_THINK.match(text, start, end)
    return (match.end(), end) if match else span


def overlap_mask(offsets, spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose chars ``[s, e)`` overlap a span (spans sorted and disjoint): one
    pass over tokens and spans together, the loop transformers' assistant mask runs.

    >>> overlap_mask([(0, 3), (3, 5), (5, 9)], [(4, 6)])
    [0, 1, 1]
    """
    mask = [0] * len(offsets)
    if not spans:
        return mask
    k, (a, b) = 0, spans[0]
    for t, (s, e) in enumerate(offsets):
        while s >= b:  # this span ends before the token: move to the next one
            k += 1
            if k == len(spans):
                return mask
            a, b = spans[k]
        if e > a:
            mask[t] = 1
    return mask


@functools.lru_cache(maxsize=16)
def _cached_encoder(tokenizer: Any, template: str, empty_think_loss: bool) -> ChatEncoder:
    return ChatEncoder(tokenizer, empty_think_loss)


def encoder_for(tokenizer: Any, empty_think_loss: bool = False) -> ChatEncoder:
    """A ChatEncoder, memoised per (tokenizer, template, flag): the probes run once."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return ChatEncoder(tokenizer, empty_think_loss)
    return _cached_encoder(tokenizer, template, empty_think_loss)


def tokenize_conversation(tokenizer: Any, messages: list[dict], tools: list | None = None,
                          where: str = "", empty_think_loss: bool = False) -> tuple[list[int], list[int]]:
    """``(input_ids, loss_mask)``: ``loss_mask[t] = 1`` iff token t is assistant output."""
    ids, mask, _ = encoder_for(tokenizer, empty_think_loss).encode(messages, tools, where or "conversation")
    return ids, mask
