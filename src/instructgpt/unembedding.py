"""Logits at chosen positions only: the unembedding skips the rest.

SFT's loss needs the logits that predict response tokens, about a quarter of a
batch's positions on the built-in world; computing the (B, T, V) logits of
the whole batch and then masking most of them wastes the unembedding's matmul
(forward and backward) and the softmax over the vocabulary there. With a real
vocabulary (49k for SmolLM2, 152k for Qwen2) those logits are also the largest
tensor of the step.

``logits_at`` runs the model's own forward (so FSDP's and PEFT's hooks, and any
elementwise post-processing of the logits such as Gemma's soft-capping, still
apply) with a pre-hook on the output-embedding module that hands it only the
chosen hidden states, and its last transformer block runs at those positions
only (``last_block.py``). A model without an output embedding falls back to the
full logits, indexed.
"""

from __future__ import annotations

import torch

from .last_block import last_block_at, query_rows


def logits_at(model, positions: torch.Tensor, **inputs) -> torch.Tensor:
    """(N, V) logits at the True entries of ``positions`` (B, T), in row-major order.

    ``inputs`` are the model's forward arguments (input_ids (B, T), attention_mask, ...).
    """
    head = model.get_output_embeddings()
    if head is None:
        return model(**inputs).logits[positions]                                  # (N, V)

    def pick(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("input")                         # (B, T, H)
        if hidden.shape[:2] != positions.shape:
            raise RuntimeError(f"logits_at: the unembedding got hidden states {tuple(hidden.shape)}, "
                               f"positions are {tuple(positions.shape)}")
        return (hidden[positions].unsqueeze(0),) + tuple(args[1:]), kwargs       # (1, N, H)

    handle = head.register_forward_pre_hook(pick, with_kwargs=True)
    try:
        # The last block runs at the chosen positions only too (``last_block.py``).
        with last_block_at(model, query_rows(positions), inputs.get("attention_mask")):
            logits = model(**inputs, use_cache=False).logits                     # (1, N, V)
    finally:
        handle.remove()
    return logits.squeeze(0)                                                      # a view: no copy in backward
