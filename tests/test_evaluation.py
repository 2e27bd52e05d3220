"""The evaluation protocols (protocol.py, evaluate.py), the releases' sudoku / countdown extraction
(tasks/release_eval.py), the lm-eval model and tasks (lm_eval_model.py, lm_eval_tasks/) and the
report, on tiny models and fixtures of our own in the published formats."""

import csv
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import UserError
from gdsd_lightning.commands.evaluate import evaluate, pick_best_on_test
from gdsd_lightning.metrics import pass_at_k, pass_at_k_mean
from gdsd_lightning.protocol import MINERVA_SUBJECTS, resolve_protocol
from gdsd_lightning.tasks import release_eval
from gdsd_lightning.tasks.countdown import arithmetic_value
from tests.conftest import SMALL, make_tiny

SUDOKU_ROWS = [("3102200002100320", "3142243142131324"), ("0140432014020000", "2143432114323214"),
               ("0401002010030310", "2431312412434312"), ("3014002020004130", "3214142323414132"),
               ("0000100420013142", "4213132424313142")]
PUZZLE, SOLUTION = SUDOKU_ROWS[0]
EXAMPLE = {"Puzzle": PUZZLE, "Solution": SOLUTION}      # empty cells: 2, 4, 5, 6, 7, 11, 12, 15
COUNTDOWN = {"input": "30,100,93", "output": "23"}


# ---- pass@k ---------------------------------------------------------------------------------
def test_pass_at_k_is_the_unbiased_estimator():
    # n = 5, c = 2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@4 = 1 (n - c < k)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k_mean([2, 0], 5, 2) == pytest.approx(0.35)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


# ---- the releases' answer extraction --------------------------------------------------------
@pytest.mark.parametrize("completion, answer", [
    ("<answer>\n```\n3142 2431\n4213 1324```</answer>", "3142243142131324"),       # digits in a fence
    ("<reasoning>r</reasoning><answer>\n3142243142131324\n</answer>", "3142243142131324"),
    ("<answer>\n31422431<|eot_id|><|endoftext|>", "3142243100000000"),              # an end token closes it
    ("<answer>\n</answer> 3142243142131324<|endoftext|>", "3142243142131324"),     # after a stray close
    ("the grid is 3142243142131324 I think", "3142243142131324"),                  # any 16-digit word
    ("<answer>[3142243142131324]</answer>", "[314224314213132"),                  # not digit-filtered
    ("no answer here", ""),
])
def test_sudoku_answer_patterns(completion, answer):
    assert release_eval.sudoku_answer(completion) == answer


def test_sudoku_cells_count_the_empty_cells_only():
    # the solution with the cell at index 2 (empty) wrong and index 0 (a clue) wrong: 7 of 8 empty cells right
    wrong = "2" + SOLUTION[1] + "1" + SOLUTION[3:]
    assert release_eval.sudoku_cells(f"<answer>{wrong}</answer>", EXAMPLE) == (7, 8)
    assert release_eval.sudoku_cells("nothing", EXAMPLE) == (0, 8)


@pytest.mark.parametrize("completion, correct", [
    ("<answer>30-(100-93)</answer>", True),
    ("<answer>\n30 - (100 - 93) = 23\n</answer>", True),                 # `= target` stripped
    ("\\boxed{30-(100-93)} <answer>30+100+93</answer>", True),            # boxed first
    ("<answer>\\boxed{30+100+93}</answer> \\boxed{30-(100-93)}", True),   # the last boxed
    ("\\boxed 30-(100-93)$ trailing", True),                               # "\boxed " up to '$'
    ("\\fbox{30+100} <answer>30-(100-93)</answer>", True),                # fbox: back to the answer tag
    ("<answer>30-100+93</answer><answer>x</answer>", True),               # the first closed tag
    ("<answer>30-(100-93)", False),                                       # unclosed: the whole text, tag included
    ("<answer>(100-93)*30</answer>", False),                              # wrong value
    ("<answer>100-93+23-30+7</answer>", False),                           # other numbers
    ("<answer>30 \\times 1 - (100-93)</answer>", False),                  # an extra number
])
def test_countdown_extraction_and_check(completion, correct):
    assert release_eval.countdown_correct(completion, COUNTDOWN, "gdsd") is correct


@pytest.mark.parametrize("completion, gdsd, d1", [
    ("30-(100-93)", True, True),                                          # no tag: the whole text for both
    ("<answer>30-(100-93)</answer>", True, False),                        # GDSD: the tag; d1: the whole text
    ("\\fbox{30+100} <answer>30-(100-93)</answer>", True, False),         # d1 reads the \fbox{...} as is
    ("\\fbox{30-(100-93)} <answer>30+100+93</answer>", False, False),     # ... which is no arithmetic
    ("<answer>\\boxed{30-(100-93)}</answer>", True, True),                 # boxed: the same for both
    ("<answer>30-(100-93)</answer> \\boxed{", True, True),                 # unclosed box: the tag for both
])
def test_countdown_unboxed_answers_read_by_each_familys_release(completion, gdsd, d1):
    assert release_eval.countdown_correct(completion, COUNTDOWN, "gdsd") is gdsd
    assert release_eval.countdown_correct(completion, COUNTDOWN, "d1") is d1


def test_countdown_values_follow_python_arithmetic_without_eval():
    assert arithmetic_value("2**3//3") == 2                                # what eval() gives
    assert arithmetic_value("-(3)+10/4") == pytest.approx(-0.5)
    assert arithmetic_value("__import__('os')") is None
    assert arithmetic_value("3(4)") is None
    assert release_eval.countdown_correct("<answer>2**2+1</answer>", {"input": "2,2,1", "output": "5"}, "gdsd")
    assert release_eval.countdown_correct("<answer>5*2/2</answer>", {"input": "2,2,5", "output": "5"}, "gdsd")
    assert not release_eval.countdown_correct("<answer>5/(2-2)</answer>", {"input": "2,2,5", "output": "5"}, "gdsd")


def test_release_prompts_are_chat_prompts_with_the_reasoning_prefill(tiny_llada):
    tokenizer = tiny_llada.tokenizer
    gdsd = release_eval.prompt_text(tokenizer, "sudoku", EXAMPLE, "gdsd")
    d1 = release_eval.prompt_text(tokenizer, "sudoku", EXAMPLE, "d1")
    assert gdsd.startswith("<user>\n\nPlease solve the following 4x4 Sudoku puzzle.")
    assert gdsd.endswith(f"Solve the following Sudoku puzzle: {PUZZLE}\n\n<assistant>\n<reasoning>")
    assert "**Example:**" in gdsd and "**Example:**" not in d1 and "\nImportant: Your solution" in d1
    countdown = release_eval.user_turn("countdown", COUNTDOWN, "gdsd")
    assert countdown.startswith("\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n"
                                "</answer>\n\nUsing only the numbers [30, 100, 93], create an arithmetic expression "
                                "that evaluates to exactly 23.")
    assert release_eval.user_turn("countdown", COUNTDOWN, "d1").endswith("\\boxed{...}\n</answer>\n\nNumbers: "
                                                                         "[30, 100, 93]\nTarget: 23")


# ---- protocol resolution --------------------------------------------------------------------
def test_the_papers_protocol_per_task():
    sudoku = resolve_protocol(load_experiment("gdsd_llada_sudoku"))
    assert (sudoku.harness, sudoku.lengths, sudoku.block_length) == ("gdsd_lightning", (128, 256, 512), 32)
    assert sudoku.steps == {128: 64, 256: 128, 512: 256} and sudoku.subset == {"size": 256, "seed": 42}
    assert sudoku.sampler["temperature"] == 0.0 and sudoku.prompts == "gdsd"
    gsm8k = resolve_protocol(load_experiment("gdsd_llada_gsm8k"))
    assert (gsm8k.harness, gsm8k.lengths, gsm8k.lm_eval_tasks, gsm8k.steps) == \
        ("lm-eval", (128, 256), ("gsm8k_cot",), {128: 128, 256: 128})
    math = resolve_protocol(load_experiment("gdsd_llada_math"))
    assert math.lengths == (256, 512) and math.lm_eval_tasks == MINERVA_SUBJECTS
    code = resolve_protocol(load_experiment("gdsd_llada_code"))
    assert code.lm_eval_tasks == ("humaneval", "mbpp") and code.lengths == (256,) and code.steps == {256: 128}
    dream = resolve_protocol(load_experiment("gdsd_dream_sudoku"))
    assert dream.block_length is None and dream.sampler["kind"] == "dream"
    tiny = resolve_protocol(load_experiment("tiny_sudoku_sft"))
    assert (tiny.name, tiny.lengths, tiny.steps, tiny.subset) == ("experiment", (16,), {16: 8}, None)


@pytest.mark.parametrize("overrides, phrase", [
    (["eval.num_samples=4"], "needs sampler.temperature > 0"),
    (["eval.lengths=[48]"], r"at generation length 48 .*: sampler.block_length \(32\) must divide"),
    (["eval.steps=3"], r"at generation length 128 .*: sampler.steps \(3\) must be a multiple of the number of blocks"),
    (["eval.checkpoint=best"], "eval.checkpoint must be one of final, best_val, best_test"),
    (["eval.protocol=paper"], "eval.protocol must be one of papers, experiment"),
])
def test_protocol_settings_that_do_not_fit_get_one_sentence(overrides, phrase):
    with pytest.raises(UserError, match=phrase):
        resolve_protocol(load_experiment("gdsd_llada_sudoku", overrides))


# ---- this harness's tasks end to end --------------------------------------------------------
def write_fixtures(tmp_path):
    sudoku = tmp_path / "sudoku.csv"
    sudoku.write_text("Puzzle,Solution\n" + "".join(f"{p},{s}\n" for p, s in SUDOKU_ROWS))
    countdown = tmp_path / "countdown.jsonl"
    countdown.write_text("".join(json.dumps(r) + "\n" for r in (COUNTDOWN, {"input": "83,18,75", "output": "10"},
                                                                {"input": "2,3,4", "output": "5"})))
    model = tmp_path / "model"
    make_tiny().save(model)
    return sudoku, countdown, model


def test_papers_protocol_on_sudoku_records_the_protocol_and_pools_the_cells(tmp_path):
    sudoku, _, model = write_fixtures(tmp_path)
    cfg = load_experiment("tiny_sudoku_sft", [*SMALL, "eval.protocol=papers", "eval.lengths=[32,64]", "eval.subset=3",
                                              "eval.num_samples=2", "sampler.temperature=1.0", "eval.batch_size=2"])
    summary = evaluate(cfg, str(model), str(sudoku), str(tmp_path / "out"))
    drawn = np.random.RandomState(42).choice(len(SUDOKU_ROWS), 3, replace=False)   # the releases' draw
    assert summary["protocol"]["steps"] == {"32": 16, "64": 32} and summary["protocol"]["pass_at"] == [1, 2]
    assert summary["data"] == {"source": str(sudoku), "rows": 5, "evaluated": 3}
    assert summary["versions"]["lm_eval"] and summary["device"]["type"] == "cpu"
    lines = (tmp_path / "out" / "generations.jsonl").read_text().splitlines()
    header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert header["protocol"] == summary["protocol"] and len(rows) == 2 * 3 * 2        # lengths x prompts x samples
    assert [r["example"]["Puzzle"] for r in rows[:3]] == [SUDOKU_ROWS[i][0] for i in drawn]
    assert rows[0]["prompt"].endswith("<assistant>\n<reasoning>")
    for length in ("32", "64"):
        at = [r for r in rows if r["length"] == int(length)]
        pooled = sum(r["correct_cells"] for r in at) / sum(r["empty_cells"] for r in at)
        assert summary["results"]["sudoku"][length]["accuracy"] == pytest.approx(pooled, abs=1e-4)
        assert {"pass@1", "pass@2", "solve_rate"} <= set(summary["results"]["sudoku"][length])
    best = summary["results"]["sudoku"]["best"]
    assert best["accuracy"] == max(summary["results"]["sudoku"][k]["accuracy"] for k in ("32", "64"))


def test_papers_sudoku_accuracy_pools_cells_and_pass_at_k_counts_solved_prompts():
    from gdsd_lightning.commands.evaluate import aggregate
    from gdsd_lightning.tasks import get_task

    protocol = resolve_protocol(load_experiment("gdsd_llada_sudoku", ["sampler.temperature=1", "eval.num_samples=2"]))
    cells = lambda correct, empty: {"correct_cells": correct, "empty_cells": empty, "correct": correct == empty}  # noqa: E731
    records = [[cells(1, 2), cells(2, 2)], [cells(3, 4), cells(0, 4)]]
    metrics = aggregate(get_task("sudoku"), protocol, records)
    # pooled: (1 + 2 + 3 + 0) / (2 + 2 + 4 + 4) = 0.5 (the mean of the ratios would be 0.5625)
    assert metrics["accuracy"] == 0.5 and metrics["solve_rate"] == 0.25
    assert (metrics["pass@1"], metrics["pass@2"], metrics["n"]) == (0.25, 0.5, 2)


def test_best_test_reports_each_cell_from_the_best_checkpoint():
    candidates = [{"checkpoint": "final", "results": {"sudoku": {"32": {"accuracy": 0.5}, "64": {"accuracy": 0.2}}}},
                  {"checkpoint": "step2.ckpt", "results": {"sudoku": {"32": {"accuracy": 0.3}, "64": {"accuracy": 0.6}}}}]
    chosen = pick_best_on_test(candidates)["sudoku"]
    assert (chosen["32"]["checkpoint"], chosen["64"]["checkpoint"]) == ("final", "step2.ckpt")
    assert chosen["best"] == {"length": 64, "accuracy": 0.6, "checkpoint": "step2.ckpt"}


def test_checkpoint_rules_choose_among_a_runs_models(tmp_path):
    from gdsd_lightning.checkpoints import models_for_rule

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    make_tiny().save(run / "final")
    for step in (2, 4):
        (run / "checkpoints" / f"step{step}.ckpt").write_bytes(b"")
    (run / "checkpoints" / "last.ckpt").symlink_to("step4.ckpt")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    (run / "summary.json").write_text(json.dumps({"steps": 4, "best_step": 2}))
    cfg = load_experiment("tiny_sudoku_sft")
    labels = lambda rule: [r.label for r in models_for_rule(cfg, str(run), rule)[0]]   # noqa: E731
    assert labels("final") == ["final"] and labels("best_val") == ["best.ckpt"]
    (run / "checkpoints" / "interrupted.ckpt").write_bytes(b"")
    # step4 holds the final model's weights, best.ckpt step2's: each evaluated once
    assert labels("best_test") == ["final", "best.ckpt"]
    (run / "checkpoints" / "step6.ckpt").write_bytes(b"")
    (run / "summary.json").write_text(json.dumps({"steps": 6, "best_step": 6}))
    assert labels("best_test") == ["final", "step2.ckpt", "step4.ckpt"]       # best = last = the final model
    (run / "summary.json").write_text(json.dumps({"steps": 4, "best_step": 0}))
    assert models_for_rule(cfg, str(run), "best_val")[0][0].source is None   # the starting model
    with pytest.raises(UserError, match="chooses among a run's checkpoints"):
        models_for_rule(cfg, str(run / "final"), "best_test")


def test_the_papers_sudoku_needs_the_published_file(tmp_path):
    _, _, model = write_fixtures(tmp_path)
    with pytest.raises(UserError, match="published test file: pass DATA="):
        evaluate(load_experiment("tiny_sudoku_sft", ["eval.protocol=papers"]), str(model))


# ---- lm-eval ------------------------------------------------------------------------------
LOCAL_TASK = """task: tiny_arithmetic
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until: ["Q:"]
  do_sample: false
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
num_fewshot: 0
"""


def test_gsm8k_and_code_go_through_lm_eval_with_local_task_files(tmp_path):
    """The papers' protocol of a GSM8K experiment, with a local task file in lm-eval's format (as
    offline) and the sandboxed HumanEval task, on a tiny model."""
    data = tmp_path / "arithmetic.jsonl"
    data.write_text('{"question": "2 plus 3?", "answer": "#### 5"}\n{"question": "4 times 2?", "answer": "#### 8"}\n')
    (tmp_path / "arithmetic.yaml").write_text(LOCAL_TASK.format(data=data))
    model = tmp_path / "model"
    make_tiny().save(model)
    cfg = load_experiment("gdsd_llada_gsm8k", ["extends=_base/cpu_smoke.yaml", f"model.path={model}",
                                               f"eval.lm_eval_tasks=[{tmp_path / 'arithmetic.yaml'},humaneval]",
                                               "eval.lengths=[16]", "eval.block_length=16", "eval.steps=8",
                                               "eval.num_examples=2"])
    summary = evaluate(cfg, str(model), out=str(tmp_path / "out"))
    results = summary["results"]
    assert results["tiny_arithmetic"]["16"]["metric"] == "exact_match,flexible-extract"
    assert results["humaneval"]["16"]["metric"] == "pass@1,none" and results["humaneval"]["16"]["n"] == 2
    assert summary["protocol"]["harness"] == "lm-eval" and summary["protocol"]["steps"] == {"16": 8}
    rows = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()[1:]]
    assert {r["task"] for r in rows} == {"tiny_arithmetic", "humaneval"} and len(rows) == 4
    assert rows[0]["prompt"].startswith("Q: ") and isinstance(rows[0]["completion"], str)


def test_lm_eval_tasks_refuse_a_data_file():
    with pytest.raises(UserError, match="^--data x.jsonl: lm-eval tasks read their own data sets"):
        evaluate(load_experiment("gdsd_llada_gsm8k"), None, "x.jsonl")


def test_sandboxed_code_tasks_score_in_our_sandbox():
    from gdsd_lightning.lm_eval_tasks.sandboxed_code import humaneval_problems, humaneval_results, mbpp_results, mbpp_shots

    problem = humaneval_problems()["test"][0]
    assert humaneval_results(problem, [problem["canonical_solution"]]) == {"pass@1": 1.0}
    assert humaneval_results(problem, ["    return None\n"]) == {"pass@1": 0.0}
    doc = {"test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]}
    assert mbpp_results(doc, ["def add(a, b):\n    return a + b"]) == {"pass@1": 1.0}
    assert mbpp_results(doc, ["def add(a, b):\n    return a * b"]) == {"pass@1": 0.0}
    shots = mbpp_shots([{"task_id": i, "code": f"c{i}"} for i in (5, 4, 1, 3, 2)])
    assert [s["task_id"] for s in shots] == [2, 3, 4] and all(s["is_fewshot"] for s in shots)


ALWAYS_EQUAL = "class Always:\n    def __eq__(self, other):\n        return True\n"


def test_sandboxed_code_tasks_fail_early_exits_and_always_equal_answers():
    """The lm-eval code tasks' verdict is the judge's: a program that exits before or during its
    tests, or answers with an object equal to everything, fails."""
    from gdsd_lightning.lm_eval_tasks.sandboxed_code import humaneval_problems, humaneval_results, mbpp_results

    problem = humaneval_problems()["test"][0]
    always = "    " + ALWAYS_EQUAL.replace("\n", "\n    ") + "return Always()\n"
    for body in ("    return 0\nimport os\nos._exit(0)", "    return 0\nimport sys\nsys.exit(0)", always):
        assert humaneval_results(problem, [body]) == {"pass@1": 0.0}, body
    doc = {"test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
           "code": "def add(a, b):\n    return a + b"}
    for program in ("def add(a, b): return 0\nimport os; os._exit(0)", "def add(a, b): return 0\nimport sys; sys.exit(0)",
                    ALWAYS_EQUAL + "def add(a, b):\n    return Always()"):
        assert mbpp_results(doc, [program]) == {"pass@1": 0.0}, program


def test_sandboxed_tasks_keep_lm_eval_prompts():
    """Our humaneval / mbpp task files prompt, stop and count shots as lm-eval's own, and the hub
    data sets we check offline are the ones lm-eval's tasks read."""
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    from gdsd_lightning.commands.lm_eval_model import HUB_DATA, TASKS_DIR

    theirs = Path(lm_eval.__file__).parent / "tasks"
    for name in ("humaneval", "mbpp"):
        ours, upstream = load_yaml(TASKS_DIR / f"{name}.yaml", resolve_func=False), \
            load_yaml(theirs / name / f"{name}.yaml", resolve_func=False)
        for key in ("doc_to_text", "doc_to_target", "generation_kwargs", "num_fewshot", "test_split", "output_type"):
            assert ours[key] == upstream[key], (name, key)
    for task, path in [("gsm8k_cot", "gsm8k/gsm8k-cot.yaml"), ("mbpp", "mbpp/mbpp.yaml"),
                       *[(s, f"minerva_math/{s}.yaml") for s in MINERVA_SUBJECTS]]:
        upstream = load_yaml(theirs / path, resolve_func=False)
        assert HUB_DATA[task] == (upstream["dataset_path"], upstream["dataset_name"]), task


def test_a_hub_task_offline_fails_in_seconds_with_one_sentence(tmp_path, monkeypatch, capsys):
    from gdsd_lightning.commands import lm_eval_model
    from gdsd_lightning.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(lm_eval_model.HUB_DATA, "gsm8k_cot", ("gdsd-lightning-tests/never-cached", "main"))
    make_tiny().save(tmp_path / "model")
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "gdsd_llada_gsm8k", "extends=_base/cpu_smoke.yaml", "--ckpt", str(tmp_path / "model")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "cannot load lm-eval task gsm8k_cot's data set 'gdsd-lightning-tests/never-cached': the Hugging Face " \
           "hub is unreachable" in err
    assert "eval.lm_eval_tasks=[path/to/task.yaml]" in err
    assert time.monotonic() - start < 15


def test_generate_until_cuts_at_stop_sequences_and_drops_special_tokens(tiny_llada):
    from gdsd_lightning.commands.lm_eval_model import DiffusionHarnessLM, cut_at_stops

    tokenizer = tiny_llada.tokenizer
    assert cut_at_stops(tokenizer, "12 + 3<eos><eos>Q: next", ["Q:"]) == "12 + 3"
    assert cut_at_stops(tokenizer, "a\nclass B<eos>", ["\nclass", "\ndef"]) == "a"
    lm = DiffusionHarnessLM(policy=tiny_llada, gen_length=8, steps=4, block_length=8, batch_size=2)
    request = type("Request", (), {"args": ("Q: 1+1?\nA:", {"until": ["Q:"]})})
    texts = lm.generate_until([request, request, request], disable_tqdm=True)
    assert len(texts) == 3 and texts[0] == texts[2] and "<eos>" not in texts[0]   # greedy: the same prompt, the same text


@pytest.mark.parametrize("model_args, phrase", [
    ({"fast_threshold": 0.9, "remasking": "random"}, "fast_threshold ranks by confidence"),
    ({"sampler": "dream", "kv_cache": True}, "fast mode exists for the block sampler only"),
    ({"gen_length": 8, "steps": 4, "block_length": 3}, r"sampler.block_length \(3\) must divide"),
])
def test_lm_eval_model_args_get_the_experiments_sampler_rules(tiny_llada, model_args, phrase):
    from gdsd_lightning.commands.lm_eval_model import DiffusionHarnessLM

    with pytest.raises(UserError, match=f"model_args do not fit together.*{phrase}"):
        DiffusionHarnessLM(policy=tiny_llada, **model_args)


def test_lora_checkpoints_load_as_saved_here_or_as_adapter_directories(tmp_path):
    """A LoRA model saved by this harness (path=) and the same adapters on their base (lora=, the
    releases' checkpoint folders) give the same greedy completions as the model in memory."""
    from gdsd_lightning.commands.lm_eval_model import DiffusionHarnessLM
    from gdsd_lightning.models import DiffusionLM
    from gdsd_lightning.models.lora import add_lora

    make_tiny().save(tmp_path / "base")
    tuned = DiffusionLM.load(tmp_path / "base")
    add_lora(tuned, r=2, alpha=4, dropout=0.0)
    with torch.no_grad():
        for name, weight in tuned.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    tuned.save(tmp_path / "tuned")
    request = type("Request", (), {"args": ("Q: 3+4?\nA:", {"until": []})})
    settings = {"gen_length": 8, "steps": 4, "block_length": 8}
    texts = [DiffusionHarnessLM(**settings, **source).generate_until([request], disable_tqdm=True)[0] for source in
             ({"policy": tuned.eval()}, {"path": str(tmp_path / "tuned")},
              {"path": str(tmp_path / "base"), "lora": str(tmp_path / "tuned")}, {"path": str(tmp_path / "base")})]
    assert texts[0] == texts[1] == texts[2] != texts[3]


def test_loglikelihood_of_one_token_is_exact(tiny_llada):
    """With one continuation token the coupled ELBO has no variance: the stratified masks mask it
    (t = 1/2, weight 1/2 / t) or keep it (its complement masks it, t_bar = 1/2), so every row gives
    log p(x | context, [MASK]) -- computed here by hand from one forward."""
    from gdsd_lightning.commands.lm_eval_model import DiffusionHarnessLM

    lm = DiffusionHarnessLM(policy=tiny_llada, num_mc=4, mc_batch_size=3)
    prefix, target = lm.encode_pair("Q: 7", "2")
    assert target.tolist() == tiny_llada.tokenizer("2")["input_ids"]
    masked = torch.cat([prefix, torch.tensor([tiny_llada.mask_id])]).unsqueeze(0)
    expected = tiny_llada(masked)[0, -1].float().log_softmax(-1)[target[0]].item()
    assert lm.elbo(prefix, target, seed=0) == pytest.approx(expected, abs=1e-5)
    request = type("Request", (), {"args": ("Q: 7", "2")})
    (first, greedy), (second, _) = lm.loglikelihood([request, request], disable_tqdm=True)
    assert first == second == pytest.approx(expected, abs=1e-5) and greedy is False


# ---- report ---------------------------------------------------------------------------------
def test_report_puts_our_numbers_beside_the_published_ones(tmp_path):
    from gdsd_lightning.commands.report import report

    sudoku, _, model = write_fixtures(tmp_path)
    cfg = load_experiment("tiny_sudoku_sft", [*SMALL, "eval.protocol=papers", "eval.lengths=[32]", "eval.subset=2"])
    summary_path = tmp_path / "tiny" / "summary.json"
    evaluate(cfg, str(model), str(sudoku), str(summary_path.parent))
    summary = json.loads(summary_path.read_text())
    summary["model"] |= {"family": "llada", "method": "gdsd"}       # as if LLaDA had been evaluated
    (tmp_path / "llada").mkdir()
    (tmp_path / "llada" / "summary.json").write_text(json.dumps(summary))
    message = report([str(tmp_path)], str(tmp_path / "report"))
    table = (tmp_path / "report" / "report.md").read_text()
    ours = 100 * summary["results"]["sudoku"]["best"]["accuracy"]
    assert f"| gdsd | papers | final | {ours:.1f} | {ours:.1f} | 89.8 |" in table and "## tiny-llada" in table
    rows = list(csv.DictReader(open(tmp_path / "report" / "report.csv")))
    assert {(r["model"], r["length"]) for r in rows} == {("llada", "32"), ("llada", "best"), ("tiny-llada", "32"),
                                                         ("tiny-llada", "best")}
    assert (tmp_path / "report" / "report.png").stat().st_size > 0 and "report.md" in message


@pytest.mark.slow
def test_lm_evals_own_command_line_runs_our_model(tmp_path):
    """`python -m gdsd_lightning.commands.lm_eval_cli --model gdsd_lightning ...`, lm-eval's command line,
    with a local task file and the sandboxed HumanEval (about a minute: lm-eval indexes its tasks)."""
    data = tmp_path / "arithmetic.jsonl"
    data.write_text('{"question": "2 plus 3?", "answer": "#### 5"}\n')
    (tmp_path / "arithmetic.yaml").write_text(LOCAL_TASK.format(data=data))
    make_tiny().save(tmp_path / "model")
    done = subprocess.run([sys.executable, "-m", "gdsd_lightning.commands.lm_eval_cli", "--model", "gdsd_lightning",
                           "--model_args", f"path={tmp_path / 'model'},gen_length=16,steps=8,block_length=16",
                           "--tasks", f"{tmp_path / 'arithmetic.yaml'},humaneval", "--limit", "1", "--device", "cpu",
                           "--output_path", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"\|humaneval *\|", done.stdout) and re.search(r"\|tiny_arithmetic *\|", done.stdout)
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_model_args_are_parsed_once_into_a_sampler_config():
    """lm-eval hands the model_args over as strings (or its own guesses of their types); they become one
    SamplerConfig, over the releases' lm-eval defaults, and the Dream sampler decodes one block."""
    from gdsd_lightning.commands.lm_eval_model import sampler_from_model_args
    from gdsd_lightning.diffusion.sampler import SamplerConfig

    block = sampler_from_model_args("block", {"gen_length": "64", "steps": "32", "fast_threshold": "",
                                              "kv_cache": "prefix", "temperature": "0.5"})
    assert block == SamplerConfig(kind="block", gen_length=64, steps=32, block_length=32, temperature=0.5,
                                  kv_cache="prefix")
    assert sampler_from_model_args("dream", {}) == SamplerConfig(kind="dream", gen_length=256, steps=128,
                                                                 block_length=256)
