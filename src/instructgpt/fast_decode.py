"""A lean one-token decode step for GPT-2 and Llama-family models (Llama, Qwen2, Mistral).

Sampling a response calls the model once per new token with a batch of
single tokens. At the sizes this package trains on a CPU, the matrix products
of such a call take ~2 ms while transformers' per-layer machinery (cache
objects, mask construction, module hooks, output dataclasses) takes ~8 ms. This
module runs the same arithmetic on the model's own parameter tensors (no copy,
so it always sees the latest weights) with a preallocated key/value cache:

    dec = LeanDecoder.create(model)            # None when the architecture is not supported
    dec.start(past_key_values, key_mask, max_new_tokens)   # cache from the HF prompt pass
    logits = dec.step(tokens, positions)       # (B,) ids, (B, 1) positions -> (B, V)

The prompt pass stays the model's own forward (one call, any architecture);
only the per-token steps are replaced. ``tests/test_fast_decode.py`` checks
the logits against transformers' own step on GPT-2, Llama and Qwen2 and that
sampling gives the same tokens. Anything unusual (cross-attention, sliding
windows, per-head norms, other activations) returns None from ``create`` and
generation uses transformers for every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LLAMA_LIKE = ("llama", "qwen2", "mistral")
# GPT-2's activations as single fused kernels ("gelu_new" is the tanh approximation of GELU)
_ACTIVATIONS = {"gelu_new": lambda x: F.gelu(x, approximate="tanh"),
                "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
                "gelu": F.gelu, "relu": F.relu}


class LeanDecoder:
    """One decode step at a time over a preallocated key/value cache of T_max columns."""

    def __init__(self, model: torch.nn.Module, kind: str):
        self.model, self.kind = model, kind
        cfg = model.config
        if kind == "gpt2":
            t = model.transformer
            self.embed, self.blocks, self.final_norm = t.wte, list(t.h), t.ln_f
            self.n_heads = self.n_kv = cfg.n_head
            self.head_dim = cfg.n_embd // cfg.n_head
            self.act = _ACTIVATIONS[cfg.activation_function]
            self.scales = [(1.0 / math.sqrt(self.head_dim) if cfg.scale_attn_weights else 1.0)
                           / (i + 1 if cfg.scale_attn_by_inverse_layer_idx else 1) for i in range(len(self.blocks))]
        else:
            body = model.model
            self.embed, self.blocks, self.final_norm, self.rotary = body.embed_tokens, list(body.layers), body.norm, body.rotary_emb
            self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
            self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            self.scales = [1.0 / math.sqrt(self.head_dim)] * len(self.blocks)
        self.lm_head = model.get_output_embeddings()
        self.keys = self.values = self.key_mask = None
        self.t = 0

    @classmethod
    def create(cls, model: torch.nn.Module, compile: bool = False) -> LeanDecoder | None:
        """A decoder for ``model``, or None when its architecture is not one this module reproduces exactly.

        ``compile``: the layer stack of a step runs through ``torch.compile`` (``compile.py``); that
        decoder is kept on the model and reused by later calls, so it is compiled once."""
        kind = block_kind(getattr(model, "config", None))
        ok = ((kind == "gpt2" and hasattr(model, "transformer") and model.config.activation_function in _ACTIVATIONS)
              or (kind == "llama" and hasattr(model, "model") and model.config.hidden_act == "silu"))
        if not ok or model.get_output_embeddings() is None or _has_hooks(model):
            return None
        if compile and getattr(model, "_compiled_lean_decoder", None) is not None:
            return model._compiled_lean_decoder
        decoder = cls(model, kind)
        if compile:
            from .compile import compile_function
            decoder._layers = compile_function(decoder._layers)
            model._compiled_lean_decoder = decoder
        return decoder

    # ------------------------------------------------------------------ cache

    def start(self, past, key_mask: torch.Tensor | None, max_new_tokens: int) -> None:
        """Copy the prompt pass's cache into buffers with room for ``max_new_tokens`` more columns.

        ``key_mask`` (B, T0) marks real prompt tokens (None: no padding)."""
        layers = [(layer.keys, layer.values) for layer in past.layers]
        k0 = layers[0][0]
        B, H, T0, D = k0.shape
        cap = T0 + max_new_tokens
        self.keys = k0.new_empty(len(layers), B, H, cap, D)                      # (L, B, H_kv, T, D)
        self.values = k0.new_empty(len(layers), B, H, cap, D)
        for i, (k, v) in enumerate(layers):
            self.keys[i, :, :, :T0] = k
            self.values[i, :, :, :T0] = v
        if key_mask is not None:
            self.key_mask = torch.ones(B, 1, 1, cap, dtype=torch.bool, device=k0.device)
            self.key_mask[:, 0, 0, :T0] = key_mask.bool()
        else:
            self.key_mask = None
        self.t = T0

    # ------------------------------------------------------------------ step

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B,) token ids at (B, 1) positions -> (B, V) next-token logits; appends to the cache."""
        t = self.t
        if t >= self.keys.shape[3]:
            raise RuntimeError("LeanDecoder: cache is full (more steps than max_new_tokens)")
        mask = self.key_mask[..., :t + 1] if self.key_mask is not None else None
        h = self._layers(tokens, positions, t, mask)
        self.t = t + 1
        return self.lm_head(h)                                                   # (B, V)

    def _layers(self, tokens, positions, t: int, mask) -> torch.Tensor:
        """(B,) ids -> (B, d) final hidden states (the compiled part when ``compile``)."""
        if self.kind == "gpt2":
            return self._gpt2(tokens, positions, t, mask)
        return self._llama(tokens, positions, t, mask)

    def _attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int,
                mask: torch.Tensor | None) -> torch.Tensor:
        """q (B, H, 1, D), k/v (B, H_kv, 1, D) -> (B, H*D), after writing k/v at column t."""
        self.keys[i, :, :, t:t + 1] = k                                          # a contiguous row per head
        self.values[i, :, :, t:t + 1] = v
        keys, values = self.keys[i, :, :, :t + 1], self.values[i, :, :, :t + 1]  # (B, H_kv, t+1, D)
        # One fused kernel; grouped-query heads share a key/value head (enable_gqa). For a single
        # query row on CPU it is as fast as two plain matmuls on a transposed key cache, and the
        # cache takes a row per new token instead of a strided column (37 us -> 4 us per write).
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scales[i],
                                             enable_gqa=self.n_kv != self.n_heads)  # (B, H, 1, D)
        return out.reshape(q.shape[0], -1)

    def _gpt2(self, tokens, positions, t, mask) -> torch.Tensor:
        wpe = self.model.transformer.wpe
        h = F.embedding(tokens, self.embed.weight) + F.embedding(positions[:, 0], wpe.weight)   # (B, d)
        B, H, D = h.shape[0], self.n_heads, self.head_dim
        for i, blk in enumerate(self.blocks):
            a = F.layer_norm(h, h.shape[-1:], blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
            qkv = torch.addmm(blk.attn.c_attn.bias, a, blk.attn.c_attn.weight)    # (B, 3d)
            q, k, v = qkv.view(B, 3, H, 1, D).unbind(1)                            # (B, H, 1, D) each
            o = self._attend(i, q, k, v, t, mask)
            h = torch.addmm(h, o, blk.attn.c_proj.weight).add_(blk.attn.c_proj.bias)  # no bias copy
            m = F.layer_norm(h, h.shape[-1:], blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
            m = self.act(torch.addmm(blk.mlp.c_fc.bias, m, blk.mlp.c_fc.weight))
            h = torch.addmm(h, m, blk.mlp.c_proj.weight).add_(blk.mlp.c_proj.bias)
        return F.layer_norm(h, h.shape[-1:], self.final_norm.weight, self.final_norm.bias, self.final_norm.eps)

    def _llama(self, tokens, positions, t, mask) -> torch.Tensor:
        h = F.embedding(tokens, self.embed.weight)                                 # (B, d)
        B, D = h.shape[0], self.head_dim
        cos, sin = self.rotary(h, positions)                                       # (B, 1, D)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                              # (B, 1, 1, D)
        for i, blk in enumerate(self.blocks):
            att = blk.self_attn
            a = _rms_norm(h, blk.input_layernorm)
            q = F.linear(a, att.q_proj.weight, att.q_proj.bias).view(B, self.n_heads, 1, D)
            k = F.linear(a, att.k_proj.weight, att.k_proj.bias).view(B, self.n_kv, 1, D)
            v = F.linear(a, att.v_proj.weight, att.v_proj.bias).view(B, self.n_kv, 1, D)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            o = self._attend(i, q, k, v, t, mask)
            h = h + F.linear(o, att.o_proj.weight, att.o_proj.bias)
            m = _rms_norm(h, blk.post_attention_layernorm)
            mlp = blk.mlp
            m = F.silu(F.linear(m, mlp.gate_proj.weight, mlp.gate_proj.bias)) * F.linear(m, mlp.up_proj.weight, mlp.up_proj.bias)
            h = h + F.linear(m, mlp.down_proj.weight, mlp.down_proj.bias)
        return _rms_norm(h, self.final_norm)


def block_kind(cfg) -> str | None:
    """"gpt2" or "llama" when a model of this config has blocks this package reproduces exactly (GPT-2
    without cross-attention; Llama, Qwen2 or Mistral without sliding windows), else None. Shared with
    ``last_block.py``, which reruns the last block at chosen positions."""
    kind = getattr(cfg, "model_type", None)
    if kind == "gpt2":
        return "gpt2" if not getattr(cfg, "add_cross_attention", False) else None
    if kind in _LLAMA_LIKE:
        windowed = (getattr(cfg, "sliding_window", None) if kind == "mistral"
                    else getattr(cfg, "use_sliding_window", False))
        return "llama" if not windowed else None
    return None


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """transformers' RMSNorm: normalise in fp32, scale by the weight in the input dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _has_hooks(model: torch.nn.Module) -> bool:
    """Forward hooks or pre-hooks (FSDP, quantisers) or adapter layers (peft's LoRA layers wrap the
    original as ``base_layer`` and add their update in forward) change what a forward pass does:
    leave such models to transformers."""
    return any(m._forward_hooks or m._forward_pre_hooks or "base_layer" in m._modules for m in model.modules())
