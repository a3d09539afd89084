"""What PPO's models compute at the response positions of a rollout.

``input_ids`` (B, P + R) are left-padded prompts (B, P) followed by
right-padded responses (B, R). The logits that predicted response token t, and
the value of the state it was taken in, are both read at the position before
it; the unembedding runs on those R positions only (``logits_to_keep`` as an
index), and the last transformer block on the R + 1 last (``last_block.py``).
"""

from __future__ import annotations

import math

import torch

from .last_block import columns_from, last_block_at
from .models import position_ids_from_mask
from .reward_model import RewardModel, fp32_head


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int) -> torch.Tensor:
    """(B, P+R) -> (B, R, V): the logits that predicted each response token."""
    with last_block_at(model, columns_from(P - 1, attention_mask), attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                     position_ids=position_ids_from_mask(attention_mask),
                     logits_to_keep=predicting_columns(input_ids, P)).logits


def predicting_columns(input_ids: torch.Tensor, P: int) -> torch.Tensor:
    """(R,) the columns P - 1 .. P + R - 2 whose logits predicted the response tokens, as the index
    ``logits_to_keep`` takes: the unembedding runs there only, and its gradient is (B, R, V), not a
    (B, R + 1, V) one that a slice of the logits would zero-fill and copy into."""
    R = input_ids.shape[1] - P
    return torch.arange(P - 1, P - 1 + R, device=input_ids.device)


def response_values(value_model: RewardModel, input_ids, attention_mask, P: int) -> torch.Tensor:
    """(B, P+R) -> (B, R): V(state before each response token)."""
    return value_model.values(input_ids, attention_mask, start=P - 1)[:, :-1]


class ValueHead(torch.nn.Module):
    """``value_model=shared``: a scalar head on the policy's final hidden states."""

    def __init__(self, hidden: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, R, H) -> (B, R) fp32 values (under bf16 autocast too)."""
        return fp32_head(self.head, hidden)


def response_logits_and_values(policy, head: ValueHead, input_ids, attention_mask, P: int, trunk_grad: bool = True):
    """One pass of the policy's trunk -> ((B, R, V) logits, (B, R) values), both read at the
    position before each response token (the unembedding runs on those positions only).
    ``trunk_grad=False``: gradients reach the head only (the value warm-up)."""
    # Through the model's own forward (FSDP's hooks run there); the last hidden state is the
    # final-norm output that the unembedding reads.
    with (torch.set_grad_enabled(trunk_grad and torch.is_grad_enabled()),
          last_block_at(policy, columns_from(P - 1, attention_mask), attention_mask)):
        out = policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                     position_ids=position_ids_from_mask(attention_mask),
                     logits_to_keep=predicting_columns(input_ids, P), output_hidden_states=True)
    h = out.hidden_states[-1][:, P - 1:-1]                                      # (B, R, H)
    return out.logits, head(h).float()


def shared_head_values(policy, head: ValueHead, input_ids, attention_mask, P: int) -> torch.Tensor:
    """(B, R) fp32 values of the shared head on a frozen trunk: gradients reach the head only."""
    with torch.no_grad(), last_block_at(policy, columns_from(P - 1, attention_mask), attention_mask):
        out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                     logits_to_keep=1, output_hidden_states=True, use_cache=False)
    return head(out.hidden_states[-1][:, P - 1:-1]).float()
