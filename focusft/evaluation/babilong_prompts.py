"""Instructions, worked examples and post-prompts for BABILong qa1-qa5 (our own wording).

Contract: ``TASK_PROMPTS[task]`` is a ``BabilongTask`` (below) in the "focusft" style. The
examples' answers follow the post-prompt's one-word format, which is also the format of the
training target. As in the official BABILong prompts, the examples use people, places and
objects outside bAbI's label set (Alice, attic, lamp, ...), so copying an example's answer can
never score; the scorer also cuts a model output at ``<example>``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BabilongTask:
    """One BABILong task's wording. ``style`` says how the pieces are assembled:

    "focusft": ``{instruction}\\n\\n{examples}\\n\\n{post_prompt}\\n\\n<context>\\n{context}
               \\n</context>\\n\\nQuestion: {question}``, examples as ``<example>`` blocks;
    "lm-eval": system = ``instruction`` (lm-eval's description), user = each example as
               ``doc_to_text + target_delimiter + target`` joined by blank lines, a blank line,
               then ``doc_to_text`` of the sample (lm-eval's fewshot_context).
    """

    style: str
    instruction: str
    examples: tuple[tuple[str, str, str], ...]  # (input, question, target)
    post_prompt: str = ""
    doc_to_text: str = ""  # jinja, lm-eval style only
    target_delimiter: str = " "
    max_new_tokens: int = 20


_ONE_PLACE = ("Reply with a single word: the name of the place. "
              "Do not write anything else after that word.")


def _task(instruction: str, examples, post_prompt: str) -> BabilongTask:
    return BabilongTask(style="focusft", instruction=instruction, examples=tuple(examples),
                        post_prompt=post_prompt, max_new_tokens=20)


TASK_PROMPTS = {
    "qa1": _task(
        "You will read a long text. Hidden in it are short statements about where people go. "
        "Ignore everything else and answer the question about the most recent place of a "
        "person, using only those statements.",
        [("Alice went to the attic. Oscar travelled to the cellar. Alice journeyed to the porch.",
          "Where is Alice?", "porch"),
         ("Oscar moved to the library. Alice went to the cellar.", "Where is Oscar?", "library")],
        _ONE_PLACE),
    "qa2": _task(
        "You will read a long text. Hidden in it are short statements about people moving "
        "around and picking up or putting down objects. An object that is carried goes "
        "wherever its carrier goes. Answer where the object is now.",
        [("Alice went to the attic. Alice took the lamp there. Alice went to the porch. Oscar "
          "moved to the cellar.", "Where is the lamp?", "porch"),
         ("Oscar went to the library. Oscar grabbed the kettle there. Oscar put down the "
          "kettle. Oscar journeyed to the cellar.", "Where is the kettle?", "library")],
        _ONE_PLACE),
    "qa3": _task(
        "You will read a long text. Hidden in it are short statements about people moving "
        "around and carrying objects. Follow every place an object has been in, in order, and "
        "answer where it was just before the place named in the question.",
        [("Oscar went to the cellar. Oscar picked up the kettle there. Oscar travelled to the "
          "porch. Alice moved to the attic.", "Where was the kettle before the porch?", "cellar")],
        _ONE_PLACE),
    "qa4": _task(
        "You will read a long text. Hidden in it are statements about how rooms are placed "
        "relative to each other (north, south, east, west). Use them to answer the question "
        "about a room's direct neighbour.",
        [("The attic is north of the library. The cellar is south of the library.",
          "What is north of the library?", "attic"),
         ("The porch is west of the pantry. The pantry is west of the cellar.",
          "What is the pantry east of?", "porch")],
        _ONE_PLACE.replace("place", "room")),
    "qa5": _task(
        "You will read a long text. Hidden in it are short statements about people moving, "
        "taking objects and handing them to each other. Answer the question about who gave "
        "what to whom.",
        [("Oscar went to the attic. Alice moved to the attic. Oscar took the lamp there. Oscar "
          "handed the lamp to Alice.", "Who received the lamp?", "Alice"),
         ("Alice went to the cellar. Alice picked up the kettle there. Oscar went to the "
          "cellar. Alice passed the kettle to Oscar.", "What did Alice give to Oscar?", "kettle")],
        "Reply with a single word: a person's name or an object. "
        "Do not write anything else after that word."),
}
