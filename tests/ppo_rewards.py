"""Programmatic rewards for PPO tests (loaded through PPOConfig.reward_fn)."""


def count_e(prompts: list[str], responses: list[str]) -> list[float]:
    """How many times the letter 'e' (a single token of the tiny test tokenizer) appears in each response."""
    return [float(r.count("e")) for r in responses]
