"""Instructions, worked examples and post-prompts for BABILong qa1-qa5 (our own wording).

Contract: ``TASK_PROMPTS[task]`` is a ``TaskPrompt(instruction, examples, post_prompt)``; the
examples are complete ``<example>...</example>`` blocks whose answers follow the post-prompt's
one-word format, which is also the format of the training target. The scorer cuts a model
output at ``<example>``, so an echoed example cannot earn credit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskPrompt:
    instruction: str
    examples: str
    post_prompt: str


def _example(context: str, question: str, answer: str) -> str:
    return f"<example>\n{context}\nQuestion: {question}\nAnswer: {answer}\n</example>"


_ONE_PLACE = ("Reply with a single word: the name of the place. "
              "Do not write anything else after that word.")

TASK_PROMPTS = {
    "qa1": TaskPrompt(
        instruction=("You will read a long text. Hidden in it are short statements about where "
                     "people go. Ignore everything else and answer the question about the most "
                     "recent place of a person, using only those statements."),
        examples="\n".join([
            _example("Sandra went to the garden. Daniel travelled to the office. "
                     "Sandra journeyed to the bedroom.", "Where is Sandra?", "bedroom"),
            _example("John moved to the hallway. Mary went to the kitchen.",
                     "Where is John?", "hallway"),
        ]),
        post_prompt=_ONE_PLACE,
    ),
    "qa2": TaskPrompt(
        instruction=("You will read a long text. Hidden in it are short statements about people "
                     "moving around and picking up or putting down objects. An object that is "
                     "carried goes wherever its carrier goes. Answer where the object is now."),
        examples="\n".join([
            _example("Mary went to the hallway. Mary took the milk there. Mary went to the bathroom. "
                     "John moved to the office.", "Where is the milk?", "bathroom"),
            _example("Daniel went to the kitchen. Daniel grabbed the apple there. "
                     "Daniel put down the apple. Daniel journeyed to the garden.",
                     "Where is the apple?", "kitchen"),
        ]),
        post_prompt=_ONE_PLACE,
    ),
    "qa3": TaskPrompt(
        instruction=("You will read a long text. Hidden in it are short statements about people "
                     "moving around and carrying objects. Follow every place an object has been "
                     "in, in order, and answer where it was just before the place named in the "
                     "question."),
        examples="\n".join([
            _example("John went to the office. John picked up the football there. "
                     "John travelled to the garden. Mary moved to the hallway.",
                     "Where was the football before the garden?", "office"),
        ]),
        post_prompt=_ONE_PLACE,
    ),
    "qa4": TaskPrompt(
        instruction=("You will read a long text. Hidden in it are statements about how rooms "
                     "are placed relative to each other (north, south, east, west). Use them to "
                     "answer the question about a room's direct neighbour."),
        examples="\n".join([
            _example("The kitchen is north of the hallway. The office is south of the hallway.",
                     "What is north of the hallway?", "kitchen"),
            _example("The garden is west of the bedroom. The bedroom is west of the bathroom.",
                     "What is the bedroom east of?", "garden"),
        ]),
        post_prompt=_ONE_PLACE.replace("place", "room"),
    ),
    "qa5": TaskPrompt(
        instruction=("You will read a long text. Hidden in it are short statements about people "
                     "moving, taking objects and handing them to each other. Answer the question "
                     "about who gave what to whom."),
        examples="\n".join([
            _example("Fred went to the office. Bill moved to the office. Fred took the milk "
                     "there. Fred handed the milk to Bill.", "Who received the milk?", "Bill"),
            _example("Jeff went to the kitchen. Jeff picked up the apple there. Mary went to the "
                     "kitchen. Jeff passed "
                     "the apple to Mary.", "What did Jeff give to Mary?", "apple"),
        ]),
        post_prompt=("Reply with a single word: a person's name or an object. "
                     "Do not write anything else after that word."),
    ),
}
