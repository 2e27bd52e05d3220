"""GSM8K: grade-school word problems; the gold answer is the number after '####' in `answer`.

Rewards are d1's five functions (maximum 4.0):
    correctness 2.0 (answer == gold) + integer answer 0.5 + strict format 0.5 + soft format 0.5
    + xml count (0.125 per well-placed tag, minus 0.001 per character after </answer>).
Accuracy compares the answer number with the gold number (commas, '$' and a trailing '.' ignored).
"""

from __future__ import annotations

import re

from gdsd_lightning.tasks.base import HubSplits, Task

STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.S)
SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.S)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalise_number(text: str) -> str | None:
    """The last number in `text` without commas and trailing zeros ('1,000.50' -> '1000.5')."""
    found = NUMBER.findall(text.replace("$", ""))
    if not found:
        return None
    number = found[-1].replace(",", "")
    return number.rstrip("0").rstrip(".") if "." in number else number


def xml_count(text: str) -> float:
    """d1's tag-count reward: 0.125 per tag written exactly once in place, minus trailing text."""
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


class GSM8K(Task):
    name = "gsm8k"
    hub = HubSplits("openai/gsm8k", "main", train="train[:-256]", val="train[-256:]", test="test")

    def validate(self, row: dict) -> dict:
        question, answer = str(row["question"]), str(row["answer"])
        if "####" not in answer or normalise_number(answer.split("####")[-1]) is None:
            raise ValueError("answer has no '#### <number>' line")
        return {**row, "question": question, "answer": answer}

    def gold(self, example: dict) -> str:
        return normalise_number(example["answer"].split("####")[-1])

    def question(self, example: dict) -> str:
        return example["question"]

    def prompt(self, example: dict) -> str:
        return f"Question: {example['question']}\nAnswer: "

    def target(self, example: dict) -> str:
        rationale = example["answer"].split("####")[0].strip()
        return f"<reasoning>\n{rationale}\n</reasoning>\n<answer>\n{self.gold(example)}\n</answer>\n"

    def accuracy(self, completion: str, example: dict) -> float:
        return float(normalise_number(self.extract_answer(completion)) == self.gold(example))

    def reward(self, completion: str, example: dict) -> float:
        answer = self.extract_answer(completion)
        return (2.0 * self.accuracy(completion, example) + 0.5 * answer.isdigit()
                + 0.5 * bool(STRICT_FORMAT.match(completion)) + 0.5 * bool(SOFT_FORMAT.search(completion))
                + xml_count(completion))
