"""MATH: competition problems; the answer is the last \\boxed{} of the completion, checked against
the gold answer with math-verify (so 1/2, 0.5 and \\frac{1}{2} agree).

Gold: `answer` when the row has it (MATH-500), else the last \\boxed{} of `solution`.
Reward: correctness 2.0 + format 0.5 x (answer tags present + \\boxed{} inside them) / 2.
"""

from __future__ import annotations

from gdsd_lightning.tasks.base import ANSWER_TAG, HubSplits, Task


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[begin:i - 1] if depth == 0 else None


def equivalent(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(f"${answer}$")))
    except Exception:  # math-verify raises on unparseable LaTeX; an unreadable answer is wrong
        return False


class MATH(Task):
    name = "math"
    hub = HubSplits("DigitalLearningGmbH/MATH-lighteval", "default", train="train[:-256]", val="train[-256:]",
                    test=("HuggingFaceH4/MATH-500", None, "test"))

    def validate(self, row: dict) -> dict:
        problem, solution = str(row["problem"]), str(row.get("solution", ""))
        answer = row.get("answer") or last_boxed(solution)
        if not answer:
            raise ValueError("row has no 'answer' and its 'solution' has no \\boxed{}")
        return {**row, "problem": problem, "solution": solution, "answer": str(answer)}

    def question(self, example: dict) -> str:
        return f"{example['problem']}\nPut the final answer in \\boxed{{}} inside the answer tags."

    def prompt(self, example: dict) -> str:
        return f"Problem: {example['problem']}\nSolution: "

    def target(self, example: dict) -> str:
        return (f"<reasoning>\n{example['solution']}\n</reasoning>\n"
                f"<answer>\n\\boxed{{{example['answer']}}}\n</answer>\n")

    def accuracy(self, completion: str, example: dict) -> float:
        answer = last_boxed(completion)
        return float(answer is not None and equivalent(answer, example["answer"]))

    def reward(self, completion: str, example: dict) -> float:
        tagged = ANSWER_TAG.findall(completion)
        boxed_inside = any("\\boxed{" in t for t in tagged)
        return 2.0 * self.accuracy(completion, example) + 0.5 * (bool(tagged) + boxed_inside) / 2
