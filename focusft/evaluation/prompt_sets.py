"""Prompt sets: the wording the BABILong and RULER generators fill.

Contract: ``ruler_texts(name)`` / ``babilong_task(name, task)`` return the texts of prompt set
``name``:

  "focusft"  the project's own wording (below; BABILong's in ``babilong_prompts.py``);
  "lm-eval"  lm-evaluation-harness's RULER / BABILong tasks, read from the installed package at
             run time (``lm_eval_tasks.py``); numbers then compare with lm-eval's tasks.

Only the wording differs between sets; structure (haystacks, counts, lengths, answer spaces)
is the generators'. Placeholders: ``{type_needle_v}`` ("numbers"/"uuids", singular when one
value is asked), ``{key}``, ``{value}``, ``{context}``, ``{query}``, ``{num_v}``, ``{i}``,
``{document}``. Answer prefixes are stored without surrounding whitespace; ``join_prefix``
attaches one to the prompt text the way lm-eval does (a space unless either side already
has whitespace at the boundary).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from focusft.evaluation.babilong_prompts import TASK_PROMPTS, BabilongTask

PROMPT_SETS = ("focusft", "lm-eval")


@dataclass(frozen=True)
class RulerTexts:
    niah_template: str  # plural form
    niah_singular: tuple[tuple[str, str], ...]  # str.replace pairs for the one-value form
    niah_prefix_single: str
    niah_prefix_plural: str
    needle: str
    repeat_noise: str  # the "noise" haystack unit (RULER: one paragraph, repeated)
    vt_template: str
    vt_prefix: str
    cwe_template: str
    cwe_prefix: str
    fwe_template: str
    fwe_prefix: str
    fwe_noise_word: str
    qa_template: str
    qa_prefix: str
    qa_document: str
    max_new_tokens: dict = field(default_factory=dict)  # "niah" | "vt" | "cwe" | "fwe" | "qa_*"
    cwe_example: bool = True  # RULER shows a worked CWE example; lm-eval's port does not

    def niah(self, single: bool) -> tuple[str, str]:
        """(template, prefix) of NIAH for one value asked (``single``) or several."""
        if not single:
            return self.niah_template, self.niah_prefix_plural
        template = self.niah_template
        for old, new in self.niah_singular:
            template = template.replace(old, new)
        return template, self.niah_prefix_single

    def new_tokens(self, task: str) -> int:
        return self.max_new_tokens["niah" if task.startswith("niah") else task]


# --- focusft's own RULER wording -------------------------------------------------------------
FOCUSFT_RULER = RulerTexts(
    niah_template=("Some special magic {type_needle_v} are hidden within the following text. "
                   "Make sure to memorize it. I will quiz you about the {type_needle_v} "
                   "afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for "
                   "{query} mentioned in the provided text?"),
    niah_singular=(("Some special magic {type_needle_v} are", "A special magic {type_needle_v} is"),
                   ("What are all the", "What is the")),
    niah_prefix_single="The special magic {type_needle_v} for {query} mentioned in the provided text is",
    niah_prefix_plural="The special magic {type_needle_v} for {query} mentioned in the provided text are",
    needle="One of the special magic {type_needle_v} for {key} is: {value}.",
    repeat_noise=("The grass is green. The sky is blue. The sun is yellow. Here we go. There and "
                  "back again."),
    vt_template=("Memorize and track the chain of variable assignments hidden in the following "
                 "text.\n\n{context}\nQuestion: Find all variables that are assigned the value "
                 "{query} in the text above."),
    vt_prefix=("Answer: According to the chain of variable assignments in the text above, "
               "{num_v} variables are assigned the value {query}, they are:"),
    cwe_template=("Below is a numbered list of words. Some of them appear many more times than "
                  "the others. Memorize the ones that appear most often.\n{context}\nQuestion: "
                  "What are the 10 most common words in the list above?"),
    cwe_prefix="Answer: The top 10 words that appear most often in the list are:",
    fwe_template=("Read the following coded text and keep track of how often each coded word "
                  "appears. Find the three coded words that appear most often. {context}\n"
                  "Question: Do not give any explanation. Ignore the dots '....'. What are the "
                  "three most frequently appearing coded words in the coded text above?"),
    fwe_prefix=("Answer: According to the coded text above, the three most frequently appearing "
                "words are:"),
    fwe_noise_word="....",
    qa_template=("Answer the question using the documents. Reply with the answer only, nothing "
                 "else.\n\nThe documents:\n\n{context}\n\nAnswer the question using the "
                 "documents. Reply with the answer only, nothing else.\n\nQuestion: {query}"),
    qa_prefix="Answer:",
    qa_document="Document {i}:\n{document}",
    max_new_tokens={"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa_1": 32, "qa_2": 32},
)


def check_prompt_set(name: str) -> None:
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; expected one of {', '.join(PROMPT_SETS)}")


@functools.lru_cache(maxsize=None)
def ruler_texts(name: str = "focusft") -> RulerTexts:
    check_prompt_set(name)
    if name == "focusft":
        return FOCUSFT_RULER
    from focusft.evaluation.lm_eval_tasks import ruler_fields

    return RulerTexts(**ruler_fields())


@functools.lru_cache(maxsize=None)
def babilong_task(name: str, task: str) -> BabilongTask:
    check_prompt_set(name)
    if name == "focusft":
        return TASK_PROMPTS[task]
    from focusft.evaluation.lm_eval_tasks import babilong_fields

    return BabilongTask(style="lm-eval", **babilong_fields(task))


def join_prefix(text: str, prefix: str) -> str:
    """``text`` followed by the answer ``prefix``, space-delimited as lm-eval does."""
    if not prefix:
        return text
    if text and not (text[-1].isspace() or prefix[0].isspace()):
        return f"{text} {prefix}"
    return text + prefix


def describe(name: str) -> str:
    """One line naming a prompt set for reports (with lm-eval's installed version)."""
    check_prompt_set(name)
    if name == "focusft":
        return "focusft (the project's own wording)"
    from focusft.evaluation.lm_eval_tasks import version

    return f"lm-eval {version()} task files (read at run time)"
