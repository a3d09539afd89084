"""What the reward model's choice is worth: best-of-m answers of the SFT policy, picked by the RM or by
the labelers themselves.

On each checkable test prompt the SFT policy samples n answers (``best_of_n``, at the evaluation's
temperature). For m = 1, 2, 4 ... n the first m answers are the candidates, and one is picked twice:

* by the reward model: the answer it scores highest (best-of-m sampling with this RM);
* by the oracle: the highest mean noiseless utility of the training labelers
  (:func:`~instructgpt.world.oracle.noiseless_utility`), what a perfect reward model of these
  labelers would pick.

Each pick is measured by the world's checker (true follow: the answer does what the prompt asks) and
by the oracle utility. m = 1 is the policy itself, so the two pickers agree there. The oracle's gain
over m = 1 is how much better answers the policy already samples; the RM's share of that gain is how
much of it the RM can show PPO. An RM that gains nothing over m = 1 ranks the policy's own answers
no better than chance, however well it separates the world's good and flawed candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..data import Prompt
from ..world.oracle import noiseless_utility
from .stats import mean_estimate, rate

PICKERS = ("rm", "oracle")


def candidate_sizes(n: int) -> list[int]:
    """1, 2, 4 ... up to n, and n itself."""
    sizes, m = [], 1
    while m < n:
        sizes.append(m)
        m *= 2
    return sizes + [n]


def best_of_n(prompts: Sequence[Prompt], answers: Sequence[Sequence[str]],
              score: Callable[[list[Prompt], list[str]], list[float]], panel, world,
              seed: int = 0) -> dict[str, dict[str, dict[str, dict]]]:
    """{str(m): {"rm" | "oracle": {"true_follow": Estimate dict, "utility": Estimate dict}}}.

    answers[i]: the n sampled answers to prompts[i] (the same n for every prompt);
    score(prompts, texts) -> the reward model's scores. Intervals bootstrap over prompts.
    """
    if len(answers) != len(prompts) or not prompts:
        raise ValueError(f"best_of_n: {len(answers)} answer sets for {len(prompts)} prompts")
    n = len(answers[0])
    if any(len(a) != n for a in answers):
        raise ValueError("best_of_n: every prompt needs the same number of answers")
    flat_prompts = [p for p in prompts for _ in range(n)]
    # as sampled (a Response keeps whether it ended: a cut answer is scored without the end token)
    flat_answers = [a for group in answers for a in group]
    scores = score(flat_prompts, flat_answers)
    labelers = panel.training_labelers
    rows = []   # per prompt: [(rm score, oracle utility, follows)] for its n answers
    for i, p in enumerate(prompts):
        group = []
        for j, text in enumerate(flat_answers[i * n:(i + 1) * n]):
            verdict = labelers[0].verdict(p, text, world)
            group.append((scores[i * n + j], noiseless_utility(labelers, p, text, world),
                          verdict.follows_instruction))
        rows.append(group)
    ids = [p.id for p in prompts]
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for m in candidate_sizes(n):
        out[str(m)] = {}
        for picker, key in zip(PICKERS, (0, 1)):
            # the first of equal best candidates: deterministic, and m = 1 is the same answer for both
            picks = [max(group[:m], key=lambda row: row[key]) for group in rows]
            out[str(m)][picker] = {
                "true_follow": rate([bool(r[2]) for r in picks], ids, seed=seed).to_dict(),
                "utility": mean_estimate([r[1] for r in picks], ids, seed=seed).to_dict()}
    return out
