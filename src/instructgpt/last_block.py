"""The last transformer block at the positions a loss reads, not at every position.

The last block feeds nothing but the final norm and the output (or scalar) head.
Every earlier block must run at every position, since later positions attend to
it, but the last block's outputs are needed only where the caller reads them:

- SFT reads the logits that predict response tokens (about half of a batch's
  positions on the built-in world);
- PPO reads logits and values at the R + 1 last columns of a rollout;
- the reward model reads one position per sequence, its last real token.

At every other position, that block's query projection share of attention,
its output projection and its MLP are wasted work: 3/4 of one block's matrix
products there, forward and backward. So:

    with last_block_at(model, rows, attention_mask):    # rows (B, n): each row's positions read
        out = model(..., use_cache=False)

runs the last block's queries at those positions only (keys and values stay at
every position). ``query_rows`` makes the rows of a (B, T) mask of read
positions; ``columns_from`` those of a batch's last columns, without reading
anything back from the device. The model's own forward runs around it (so FSDP,
PEFT and the final norm are as before) and the block's own submodules run inside
it (so LoRA adapters and quantised layers apply). Outputs at the read positions
equal the model's own to float tolerance, in training too: dropout draws the
masks the model's own block would and keeps their read rows. The block's outputs
at other positions are zeros, so what the model returns there is not its output.

The positions of a row must be distinct (gradients flow back once): a row with
fewer reads than another is given unread positions after its own. Only GPT-2 and
Llama-family blocks (``fast_decode.block_kind``) are rewritten. The context is a
no-op, and the model's own block runs, when the architecture is another, the
block is compiled, checkpointed or already wrapped (accelerate's hooks), a
key/value cache is passed, or there are no rows.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .compile import block_types
from .fast_decode import block_kind, rotate_half


def query_rows(reads: torch.Tensor) -> torch.Tensor | None:
    """(B, T) bool -> (B, n) long: each row's read positions in order, then its first unread ones, n the
    most reads of a row (one read back from the device). None when some row reads every position
    (nothing to save) or none reads any."""
    T = reads.shape[1]
    n = int(reads.sum(1).max()) if reads.numel() else 0
    if not 0 < n < T:
        return None
    # A stable sort of 0 (read) before 1 (unread) keeps each group in position order.
    return torch.argsort((~reads).to(torch.uint8), dim=1, stable=True)[:, :n]     # (B, n)


def columns_from(start: int, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """(B, T) -> (B, T - start) rows of the columns ``start`` .. T-1; None when that is every column."""
    B, T = attention_mask.shape
    if start <= 0:
        return None
    return torch.arange(start, T, device=attention_mask.device).expand(B, -1)


def last_block(model: torch.nn.Module) -> tuple[torch.nn.Module, str] | None:
    """The model's last transformer block and its kind ("gpt2"/"llama"), or None when it is not one
    that :func:`last_block_at` may rewrite."""
    cfg = getattr(model, "config", None)
    kind = block_kind(cfg)
    if kind is None:
        return None
    names = block_types(model)
    # FSDP2 subclasses a sharded block's class (FSDPGPT2Block): its hooks gather the block's weights
    # around the block's call, which still happens, so the block is found by its original class.
    blocks = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not blocks or len(blocks) != getattr(cfg, "num_hidden_layers", None):
        return None
    block = blocks[-1]
    attn = block.attn if kind == "gpt2" else block.self_attn
    wrapped = ("forward" in block.__dict__                      # accelerate's hooks replace forward
               or getattr(block, "_compiled_call_impl", None) is not None
               or getattr(block, "gradient_checkpointing", False))
    unusual = (getattr(attn, "reorder_and_upcast_attn", False) or getattr(attn, "sliding_window", None)
               or (kind == "llama" and not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))))
    return None if wrapped or unusual else (block, kind)


@contextmanager
def last_block_at(model: torch.nn.Module, rows: torch.Tensor | None, attention_mask: torch.Tensor | None):
    """Within the context, ``model``'s forward computes its last block at the positions ``rows`` (B, n)
    only (distinct within a row; None: at every position). ``attention_mask`` (B, T) marks real tokens
    (None: all are)."""
    found = last_block(model) if rows is not None else None
    if found is None or (attention_mask is not None and attention_mask.dim() != 2):   # a 4-D mask of the caller's
        yield
        return
    block, kind = found
    own = block.forward
    signature = inspect.signature(own)

    def forward(*args, **kwargs):
        call = signature.bind(*args, **kwargs).arguments
        h = call["hidden_states"]                                                  # (B, T, d)
        if (call.get("past_key_values") is not None or call.get("encoder_hidden_states") is not None
                or h.shape[0] != rows.shape[0] or (attention_mask is not None and h.shape[:2] != attention_mask.shape)):
            return own(*args, **kwargs)
        keys = attention_mask.bool() if attention_mask is not None else h.new_ones(h.shape[:2], dtype=torch.bool)
        allowed = _query_key_mask(rows, keys)                                      # (B, 1, n, T)
        if kind == "gpt2":
            x = _gpt2_block(block, h, rows, allowed)                               # (B, n, d)
        elif call.get("position_embeddings") is not None:
            x = _llama_block(block, h, rows, allowed, call["position_embeddings"])
        else:
            return own(*args, **kwargs)
        index = rows.unsqueeze(-1).expand(-1, -1, h.shape[-1])                     # (B, n, d)
        return h.new_zeros(h.shape).scatter(1, index, x)                           # (B, T, d)

    block.forward = forward
    try:
        yield
    finally:
        del block.forward


def _query_key_mask(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, n) query positions, (B, T) real keys -> (B, 1, n, T) bool: causal over real keys, as the
    model's own mask. A query with no such key (an unread left-pad position) may see itself, so that
    its (unused) output is finite."""
    T = keys.shape[1]
    columns = torch.arange(T, device=rows.device)
    allowed = (columns <= rows.unsqueeze(-1)) & keys.unsqueeze(1)                  # (B, n, T)
    alone = ~allowed.any(-1, keepdim=True) & (columns == rows.unsqueeze(-1))
    return (allowed | alone).unsqueeze(1)


def _pick(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> (B, n, ...) at each row's positions."""
    index = rows.view(*rows.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


# Dropout draws the masks of the whole block, as the model's own block does, and keeps the rows read:
# the same random numbers are drawn in the same order (a CPU dropout of a (B, T, k) tensor is one
# Bernoulli draw per element, in order), so training outputs match the model's own at the reads, and a
# run checkpointed (the model's own block) or not (this one) takes the same steps.

def _dropout_at(x: torch.Tensor, rows: torch.Tensor, T: int, p: float, training: bool) -> torch.Tensor:
    """Dropout of (B, n, k) ``x`` with the mask a (B, T, k) dropout would draw, at ``rows``."""
    if not training or p == 0:
        return x
    keep = F.dropout(x.new_ones(x.shape[0], T, x.shape[2]), p, True)              # (B, T, k): 0 or 1/(1-p)
    return x * _pick(keep, rows)


def _attention(q, k, v, allowed, rows, scale: float, p: float, training: bool) -> torch.Tensor:
    """q (B, H, n, D), k/v (B, H_kv, T, D) -> (B, H, n, D); with dropout on the probabilities, the
    (B, H, T, T) mask ``scaled_dot_product_attention`` would draw for all T queries, at ``rows``."""
    gqa = k.shape[1] != q.shape[1]
    if not training or p == 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=gqa)
    B, H, n, _ = q.shape
    T = k.shape[2]
    keep = F.dropout(q.new_ones(B, H, T, T), p, True)                             # (B, H, T, T)
    keep = keep.gather(2, rows.view(B, 1, n, 1).expand(-1, H, -1, T))             # (B, H, n, T)
    if gqa:
        k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) * keep) @ v


def _gpt2_block(block, h: torch.Tensor, rows: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """transformers' GPT2Block with queries at ``rows``: (B, T, d) -> (B, n, d)."""
    attn, mlp = block.attn, block.mlp
    (B, T, d), n, H = h.shape, rows.shape[1], attn.num_heads
    q, k, v = attn.c_attn(block.ln_1(h)).split(attn.split_size, dim=2)           # (B, T, d) each (one fused product)
    q = _pick(q, rows).view(B, n, H, -1).transpose(1, 2)                          # (B, H, n, D)
    k, v = (t.view(B, T, H, -1).transpose(1, 2) for t in (k, v))                  # (B, H, T, D)
    o = _attention(q, k, v, allowed, rows, attn.scaling, attn.attn_dropout.p, attn.training)
    o = attn.c_proj(o.transpose(1, 2).reshape(B, n, d))
    x = _pick(h, rows) + _dropout_at(o, rows, T, attn.resid_dropout.p, attn.resid_dropout.training)
    m = mlp.c_proj(mlp.act(mlp.c_fc(block.ln_2(x))))                              # GPT2MLP without its dropout
    return x + _dropout_at(m, rows, T, mlp.dropout.p, mlp.dropout.training)


def _llama_block(block, h: torch.Tensor, rows: torch.Tensor, allowed: torch.Tensor, position_embeddings) -> torch.Tensor:
    """transformers' Llama/Qwen2/Mistral decoder layer with queries at ``rows``: (B, T, d) -> (B, n, d)."""
    attn = block.self_attn
    (B, T, _), n, D = h.shape, rows.shape[1], attn.head_dim
    a = block.input_layernorm(h)                                                  # (B, T, d)
    q = attn.q_proj(_pick(a, rows)).view(B, n, -1, D).transpose(1, 2)             # (B, H, n, D)
    k = attn.k_proj(a).view(B, T, -1, D).transpose(1, 2)                          # (B, H_kv, T, D)
    v = attn.v_proj(a).view(B, T, -1, D).transpose(1, 2)
    cos, sin = (t.expand(B, -1, -1) for t in position_embeddings)                # (B or 1, T, D) -> (B, T, D)
    q = q * _pick(cos, rows).unsqueeze(1) + rotate_half(q) * _pick(sin, rows).unsqueeze(1)
    k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
    o = _attention(q, k, v, allowed, rows, attn.scaling, attn.attention_dropout, attn.training)
    x = _pick(h, rows) + attn.o_proj(o.transpose(1, 2).reshape(B, n, -1))
    return x + block.mlp(block.post_attention_layernorm(x))
