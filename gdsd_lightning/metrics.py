"""pass@k, shared by this harness's tasks and the lm-eval path of `eval`.

With n completions of a prompt of which c are correct, the unbiased estimator (Chen et al. 2021,
"Evaluating large language models trained on code") of the chance that k of them hold a correct one:

    pass@k = 1 - C(n - c, k) / C(n, k)
"""

from __future__ import annotations

import math
import statistics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with c correct among n samples: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_mean(correct_counts: list[int], n: int, k: int) -> float:
    """pass@k averaged over prompts, `correct_counts[i]` of n samples of prompt i correct."""
    return statistics.fmean(pass_at_k(n, c, k) for c in correct_counts)
