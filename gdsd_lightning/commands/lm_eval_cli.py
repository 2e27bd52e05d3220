"""lm-eval's command line with this harness's model and sandboxed code tasks:

    python -m gdsd_lightning.commands.lm_eval_cli --model gdsd_lightning --model_args path=DIR,gen_length=256 \
        --tasks gsm8k_cot,minerva_math,humaneval,mbpp [any other lm-eval option]

lm-eval finds a model only in its own registry, which it fills from its own package (lm-eval
0.4.13 reads no entry points), so a plain `lm_eval --model gdsd_lightning` cannot see this
harness's model. This command imports it (registering `gdsd_lightning`, lm_eval_model.py), adds
gdsd_lightning/lm_eval_tasks as an include path (its `humaneval` and `mbpp` replace lm-eval's own,
so generated code runs in this harness's sandbox, never in lm-eval's unconfined `code_eval`),
then hands every argument to lm-eval's command line.
"""

from __future__ import annotations

import sys

from gdsd_lightning.errors import UserError
from gdsd_lightning.commands.lm_eval_model import TASKS_DIR


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("--include_path") for a in argv):
        sys.exit("error: this command passes --include_path itself (the sandboxed code tasks); give your own "
                 "task files as paths in --tasks instead")
    sys.argv = ["lm_eval", *argv, "--include_path", str(TASKS_DIR)]
    try:
        cli_evaluate()
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
