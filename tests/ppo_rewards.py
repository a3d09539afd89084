"""Programmatic rewards for PPO tests (loaded through PPOConfig.reward_fn)."""


def count_e(prompts: list[str], responses: list[str]) -> list[float]:
    """How many times the letter 'e' (a single token of the tiny test tokenizer) appears in each response."""
    return [float(r.count("e")) for r in responses]


def batch_mean(prompts: list[str], responses: list[str]) -> list[float]:
    """A buggy reward: one number for the whole batch instead of one per response."""
    return [sum(r.count("e") for r in responses) / len(responses)]


def nan_for_empty(prompts: list[str], responses: list[str]) -> list[float]:
    """A buggy reward: NaN for every response (e.g. a mean over no items)."""
    return [float("nan")] * len(responses)


def distinct_characters(prompts: list[str], responses: list[str]) -> list[float]:
    """How many different characters each response has (responses of the untrained test models differ here
    where they rarely hold an 'e')."""
    return [float(len(set(r))) for r in responses]
