"""GSM8K: grade-school word problems; the gold answer is the text after '####' in `answer`.

Reward: the five functions of the GDSD release's `gsm8k_xml` (gdsd/rewards.py:242-303), summed in
its order (maximum 4.0). The answer is the text after the last "<answer>" up to the next
"</answer>", stripped (the whole completion without tags):
    xml count    0.125 for each of "<reasoning>\\n", "\\n</reasoning>\\n", "\\n<answer>\\n", "\\n</answer>"
                 written exactly once; minus 0.001 per character after "\\n<answer>\\n" (the
                 answer and its closing tag included) and per character after "\\n</answer>" but one
    soft format  0.5 when the completion starts <reasoning>...</reasoning> <answer>...</answer>
    strict       0.5 for exactly "<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>\\n"
    integer      0.5 when the answer is all digits (`str.isdigit`)
    correctness  2.0 when the answer is exactly the gold text
d1 (release="d1") differs in three places: its soft and strict formats match without re.DOTALL
(no line break inside the tags), its xml count charges the characters after "\\n</answer>\\n"
instead, and its gold is the text between the first and a second '####' (d-OPSD's too).
d-OPSD's gate (release="dopsd") compares a number read from the first \\boxed{} (else the answer
tag) with the gold number.
Accuracy is the correctness (exact match); the papers' GSM8K numbers come from lm-eval.
"""

from __future__ import annotations

import re

from gdsd_lightning.tasks.base import ANSWER_FORMAT, DOPSD_ANSWER_FORMAT, CLOSED_ANSWER_TAG, HubSplits, Task

STRICT_FORMAT = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
SOFT_FORMAT = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
NUMBER = re.compile(r"-?\d+\.?\d*")


def xml_answer(completion: str) -> str:
    """The text after the last "<answer>" up to the next "</answer>", stripped."""
    return completion.split("<answer>")[-1].split("</answer>")[0].strip()


def xml_count(text: str, charged_after: str) -> float:
    """0.125 per tag written exactly once, less 0.001 per character after `charged_after` (GDSD:
    "\\n<answer>\\n"; d1: "\\n</answer>\\n") and per character after "\\n</answer>" but one. Added
    up in the release's order, so the floats are the same."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split(charged_after)[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def number_from(text: str, first: bool) -> float | None:
    """float(text), else the first (or last) number in it; None without one."""
    try:
        return float(text)
    except ValueError:
        numbers = NUMBER.findall(text)
        return float(numbers[0 if first else -1]) if numbers else None


def dopsd_number(completion: str) -> float | None:
    """d-OPSD's reading (d-opsd/utils.py get_parsed_answer): the first \\boxed{...} (up to its
    first '}') that holds a number once commas are dropped, else the number in the first closed
    answer tag (the last one when it holds more)."""
    for content in re.findall(r"\\boxed{(.*?)}", completion):
        content = content.strip().replace(",", "")
        if content and content != "..." and not re.match(r"^\.+$", content):
            number = number_from(content, first=True)
            if number is not None:
                return number
    tagged = CLOSED_ANSWER_TAG.search(completion)
    text = tagged.group(1).strip() if tagged else ""
    return number_from(text, first=False) if text else None


class GSM8K(Task):
    name = "gsm8k"
    hub = HubSplits("openai/gsm8k", "main", train="train[:-256]", val="train[-256:]", test="test")

    def validate(self, row: dict) -> dict:
        question, answer = str(row["question"]), str(row["answer"])
        if "####" not in answer or not answer.split("####", 1)[1].strip():
            raise ValueError("answer has no '#### <answer>' line")
        return {**row, "question": question, "answer": answer}

    def gold(self, example: dict) -> str:
        """The text after '####' (d1, d-OPSD: between the first and a second '####'), stripped."""
        parts = example["answer"].split("####") if self.release in ("d1", "dopsd") else example["answer"].split("####", 1)
        return parts[1].strip()

    def question(self, example: dict) -> str:
        instructions = DOPSD_ANSWER_FORMAT if self.release == "dopsd" else ANSWER_FORMAT
        return f"{instructions}\n\n{example['question']}"

    def prompt(self, example: dict) -> str:
        return f"Question: {example['question']}\nAnswer: "

    def target(self, example: dict) -> str:
        rationale = example["answer"].split("####")[0].strip()
        answer = f"\\boxed{{{self.gold(example)}}}" if self.release == "dopsd" else self.gold(example)
        return f"<reasoning>\n{rationale}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"

    def accuracy(self, completion: str, example: dict) -> float:
        if self.release == "dopsd":
            number, gold = dopsd_number(completion), self.gold(example)
            try:
                return float(number is not None and number == float(gold))
            except ValueError:                              # a gold that is not a number
                return float(number is not None and str(number) == gold)
        return float(xml_answer(completion) == self.gold(example))

    def reward(self, completion: str, example: dict) -> float:
        """The release's five rewards in its order (d-OPSD has none: its gate is the accuracy)."""
        if self.release == "dopsd":
            return self.accuracy(completion, example)
        d1 = self.release == "d1"
        flags = 0 if d1 else re.DOTALL
        answer = xml_answer(completion)
        total = xml_count(completion, "\n</answer>\n" if d1 else "\n<answer>\n")
        total += 0.5 if re.match(SOFT_FORMAT, completion, flags) else 0.0
        total += 0.5 if re.match(STRICT_FORMAT, completion, flags) else 0.0
        total += 0.5 if answer.isdigit() else 0.0
        total += 2.0 if answer == self.gold(example) else 0.0
        return total
