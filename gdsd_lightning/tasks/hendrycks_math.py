"""MATH: competition problems with a \\boxed{} answer in the solution.

Reward (GDSD release, `math_xml`, gdsd/rewards.py:224-239 and utils/math500_utils.py:4-16), on the
answer text: what follows the first "<answer>" up to the next "</answer>" (the whole completion
without an "<answer>"):
    correctness  2.0 when the content of the answer text's last \\boxed{} (the whole answer text
                 when it has none) equals the solution's, both normalised by MATH's `strip_string`
    format       0.5 x (1 if there is an "<answer>" + (1 if "\\boxed" is in the answer text else 0.5))
so 3.0 at most. d1 (release="d1") takes the last \\boxed{} of the whole completion, raises where
MATH's code raises (`math_answers`, strict), and its format check looks for "\\x08oxed" (its
"\\boxed" is not a raw string: "\\b" is a backspace), so its boxed credit is 0.5 in practice.
d-OPSD's gate (release="dopsd") reads the last \\boxed{} (or the first answer tag) and compares
it the strict way.
Accuracy: the same answer checked against the gold `answer` with math-verify (1/2, 0.5 and
\\frac{1}{2} agree), the evaluation checker; gold `answer` is the row's, else its solution's box.
"""

from __future__ import annotations

from gdsd_lightning.tasks.base import ANSWER_FORMAT, CLOSED_ANSWER_TAG, DOPSD_ANSWER_FORMAT, HubSplits, Task
from gdsd_lightning.tasks.math_answers import NotNormalisable, is_equiv, last_boxed, unbox


def answer_text(completion: str) -> str:
    """GDSD's answer text: after the first "<answer>" up to the next "</answer>"; else everything."""
    if "<answer>" not in completion:
        return completion
    return completion.split("<answer>", 1)[1].split("</answer>", 1)[0]


def equivalent(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(f"${answer}$")))
    except Exception:  # math-verify raises on unparseable LaTeX; an unreadable answer is wrong
        return False


def dopsd_answer(text: str) -> str | None:
    """d-OPSD's reading of a completion or a solution (d-opsd/utils.py get_parsed_answer_math):
    the content of the last \\boxed{}, the whole text without one; when that fails or is empty,
    the first closed answer tag."""
    try:
        answer = unbox(last_boxed(text), strict=True)
    except NotNormalisable:
        answer = None
    if not answer:
        tagged = CLOSED_ANSWER_TAG.search(text)
        if tagged:
            answer = tagged.group(1).strip()
    return answer


class MATH(Task):
    name = "math"
    # The GDSD release trains on ankner/math-500's train split (the 12,000 MATH problems outside
    # MATH-500); its last 256 are held out here as val. Test: MATH-500.
    hub = HubSplits("ankner/math-500", None, train="train[:-256]", val="train[-256:]",
                    test=("HuggingFaceH4/MATH-500", None, "test"))

    def validate(self, row: dict) -> dict:
        answer = self.gold_answer(row)
        if not answer:
            raise ValueError("row has no 'answer' and its 'solution' has no \\boxed{}")
        return {**row, "problem": str(row["problem"]), "solution": str(row.get("solution") or ""), "answer": str(answer)}

    @staticmethod
    def gold_answer(example: dict) -> str | None:
        """The row's `answer` (MATH-500, ankner/math-500), else the content of its solution's box."""
        solution = str(example.get("solution") or "")
        boxed = unbox(last_boxed(solution)) if "\\boxed" in solution or "\\fbox" in solution else None
        return example.get("answer") or boxed

    def question(self, example: dict) -> str:
        if self.release == "dopsd":
            return f"{DOPSD_ANSWER_FORMAT}\n\n{example['problem']}"
        if self.release == "d1":
            return (f"{ANSWER_FORMAT}\n\nYou are a math expert. You will be given a question to solve. Solve it step "
                    f"by step. Wrap the final answer in a \\boxed{{}}. \n\n{example['problem']}")
        return (f"{ANSWER_FORMAT}\n\nYou are a math expert. Solve the problem step by step. Wrap the final answer "
                f"in a \\boxed{{}}.\n\n{example['problem']}")

    def prompt(self, example: dict) -> str:
        return f"Problem: {example['problem']}\nSolution: "

    def target(self, example: dict) -> str:
        return (f"<reasoning>\n{example['solution']}\n</reasoning>\n"
                f"<answer>\n\\boxed{{{example['answer']}}}\n</answer>\n")

    @staticmethod
    def solution(example: dict) -> str:
        """What the releases compare with: the solution (its box), or the answer when it has none."""
        return example.get("solution") or example["answer"]

    def accuracy(self, completion: str, example: dict) -> float:
        if self.release == "dopsd":
            answer, gold = dopsd_answer(completion), dopsd_answer(self.solution(example))
            return float(answer is not None and is_equiv(answer, gold, strict=True))
        answer = unbox(last_boxed(answer_text(completion)))
        gold = self.gold_answer(example)
        return float(answer is not None and gold is not None and equivalent(answer, gold))

    def reward(self, completion: str, example: dict) -> float:
        """Correctness + format of the release (d-OPSD has none: its gate is the accuracy)."""
        if self.release == "dopsd":
            return self.accuracy(completion, example)
        if self.release == "d1":
            return self.d1_reward(completion, example)
        text, gold = answer_text(completion), unbox(last_boxed(self.solution(example)))
        correct = 2.0 if is_equiv(unbox(last_boxed(text)), gold) else 0.0
        return correct + 0.5 * (("<answer>" in completion) + (1.0 if "\\boxed" in text else 0.5))

    def d1_reward(self, completion: str, example: dict) -> float:
        """d1's correctness and format (diffu-grpo/reward_func.py:232-272, math500_utils.py:13-26)."""
        try:
            answer = unbox(last_boxed(completion), strict=True)
        except NotNormalisable:
            answer = completion
        correct = 2.0 if is_equiv(answer, unbox(last_boxed(self.solution(example))), strict=True) else 0.0
        tagged = "<answer>" in completion
        text = completion.split("<answer>")[1].split("</answer>")[0] if tagged else completion
        return correct + 0.5 * (tagged + (1.0 if "\x08oxed" in text else 0.5))
