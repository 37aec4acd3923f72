"""SD3's joint context without its run of identical tokens (same picture, less work).

Without a T5 file, Stable Diffusion 3's context is 77 CLIP tokens followed by 256 zero rows
(``StableDiffusion3Pipeline`` builds it so, and Studio's Sampler follows the pipeline). In
``SD3Transformer2DModel`` every operation on context tokens except joint attention works on
each token alone (``context_embedder``, the adaptive layer norms, qk RMS norms, the q/k/v and
output projections, the feed-forward; context tokens get no positional embedding, dropout is
off at inference), so identical input rows stay identical in every block. In joint attention
``n`` identical keys with identical values weigh exactly as one such key whose logit is raised
by ``ln(n)``:

    sum_j exp(s_j) v_j  over the n copies  =  exp(s + ln n) v

and each of the n identical queries gets the same output. So the Sampler passes the context
with a trailing run of ``n`` identical rows cut to one row and adds ``ln(n)`` to that key's
logit (:class:`BiasedJointAttnProcessor`); the image tokens' output (the only one the
transformer returns) is the same up to float rounding. With 64 image tokens (studio-tiny-flow
at 64x64) the joint sequence shrinks from 397 to 142 tokens; at 1024x1024 from 4429 to 4174.

It applies only where that holds: a ``SD3Transformer2DModel`` whose attention processors are
all diffusers' plain ``JointAttnProcessor2_0`` (no IP-Adapter or other processor), and only to
a run of at least two identical rows, which is what a missing T5 leaves (T5's own padding
outputs differ by position, so with T5 nothing is cut); on CUDA only where it pays
(:func:`pays`). In fp16 / bf16 the bias is rounded to that type like every logit (bf16:
within 0.016 of ln 256).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

#: Below this many identical rows there is nothing worth cutting.
MIN_RUN = 2


def trailing_run(embeds: torch.Tensor) -> int:
    """How many rows at the end of every batch entry of ``embeds`` (B x L x W) equal that
    entry's last row (the smallest such count over the batch; at least 1)."""
    same = (embeds == embeds[:, -1:, :]).all(dim=-1)  # B x L
    run = same.flip(1).to(torch.int64).cumprod(dim=1).sum(dim=1)
    return max(int(run.min()), 1)


def collapse(embeds: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """``embeds`` with its trailing run of identical rows cut to one, and the logit bias
    (``ln`` of the run's length) for that row; ``(embeds, None)`` when there is no run."""
    n = trailing_run(embeds)
    if n < MIN_RUN:
        return embeds, None
    return embeds[:, : embeds.shape[1] - n + 1], math.log(n)


def pays(removed: int, total: int, device: torch.device) -> bool:
    """Whether cutting ``removed`` of a joint sequence of ``total`` tokens saves time. On the
    CPU always (its attention kernels take the bias at no extra cost). On CUDA the bias rules
    out the flash-attention kernel, so only where the cut shrinks the sequence by a quarter or
    more (studio-tiny-flow, SD3 at 256x256); at SD3's 1024x1024 it would remove 6 % of the
    tokens and is not made (not measured on a GPU yet)."""
    if torch.device(device).type != "cuda":
        return True
    return removed * 4 >= total


def _joint_processor_class() -> Any:
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    class BiasedJointAttnProcessor(JointAttnProcessor2_0):
        """diffusers' ``JointAttnProcessor2_0`` (same computation, line for line) that adds
        ``context_bias`` to the logit of the joint sequence's last key (the one context row
        that stands for a run of identical rows). Without it, or in attention over the image
        tokens alone (SD3.5's second attention), it is ``JointAttnProcessor2_0``."""

        def __call__(
            self,
            attn: Any,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            context_bias: float | None = None,
            *args: Any,
            **kwargs: Any,
        ) -> torch.Tensor:
            if encoder_hidden_states is None or not context_bias:
                return super().__call__(
                    attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs
                )
            residual = hidden_states
            batch_size = hidden_states.shape[0]
            query = attn.to_q(hidden_states)
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)
            inner_dim = key.shape[-1]
            head_dim = inner_dim // attn.heads

            def heads(x: torch.Tensor) -> torch.Tensor:
                return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

            query, key, value = heads(query), heads(key), heads(value)
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            c_query = heads(attn.add_q_proj(encoder_hidden_states))
            c_key = heads(attn.add_k_proj(encoder_hidden_states))
            c_value = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                c_query = attn.norm_added_q(c_query)
            if attn.norm_added_k is not None:
                c_key = attn.norm_added_k(c_key)
            query = torch.cat([query, c_query], dim=2)
            key = torch.cat([key, c_key], dim=2)
            value = torch.cat([value, c_value], dim=2)
            bias = torch.zeros(1, 1, 1, key.shape[2], dtype=query.dtype, device=query.device)
            bias[..., -1] = context_bias
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False
            )
            hidden_states = hidden_states.transpose(1, 2).reshape(
                batch_size, -1, attn.heads * head_dim
            )
            hidden_states = hidden_states.to(query.dtype)
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
            return hidden_states, encoder_hidden_states

    return BiasedJointAttnProcessor


_CLASS: Any = None


def processor_class() -> Any:
    global _CLASS
    if _CLASS is None:
        _CLASS = _joint_processor_class()
    return _CLASS


def prepare(net: Any) -> bool:
    """Make ``net`` able to take a collapsed context; False where the collapse would not be
    exact (not an SD3 transformer, or attention processors other than diffusers' plain
    joint one). Swaps in :class:`BiasedJointAttnProcessor`, which computes the same as the
    one it replaces when no bias is passed."""
    from diffusers import SD3Transformer2DModel
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    if not isinstance(net, SD3Transformer2DModel):
        return False
    cls = processor_class()
    procs = net.attn_processors
    if not procs or any(type(p) not in (JointAttnProcessor2_0, cls) for p in procs.values()):
        return False
    if any(type(p) is not cls for p in procs.values()):
        net.set_attn_processor(cls())
    return True
