"""Attention heads as unit layers of torch.nn transformers (SPEC S9): unfused stand-ins that expose them.

`nn.MultiheadAttention` applies its output projection inside `F.multi_head_attention_forward`, and in eval mode
`nn.TransformerEncoderLayer` may run a fused kernel: the per-head tensor, the input of the output projection,
never exists where a hook could clamp it. `unfused_attention(model)` returns a copy of the model sharing every
parameter and buffer (same state-dict keys) in which each `nn.TransformerEncoder`, `nn.TransformerEncoderLayer`
and `nn.MultiheadAttention` is replaced by a module computing the same function op by op:

- `UnfusedMultiheadAttention`: q, k, v projections, scaled dot-product scores with the attention and key-padding
  masks (boolean or additive, as torch takes them), softmax, the heads' outputs `(B, T, heads * d_head)` through
  a `HeadTap` (one unit per head, SPEC S9), then `out_proj`;
- `UnfusedEncoderLayer`: the layer's own post- or pre-norm (`norm_first`) residual blocks, its activation called
  as a module `activation` (a ReLU/GELU module where torch stores the function), so that the MLP neurons, the
  input of `linear2`, are one unit layer with producer `linear1` and consumer `linear2`;
- `UnfusedEncoder`: the layers in turn, then the encoder's final norm (no nested-tensor fast path: the outputs
  at padded positions are computed, not zeroed; resetassay leaves padded positions out).

`taps.tap_unit_layers` traces the copy and checks its outputs against the original model on the example batch,
so a fused path can never skip a lesion silently: every forward of the assay runs the copy.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from resetassay.errors import BadInputError

REPLACED = (nn.TransformerEncoder, nn.TransformerEncoderLayer, nn.MultiheadAttention)
ACTIVATION_MODULES = {F.relu: nn.ReLU, F.gelu: nn.GELU}


class HeadTap(nn.Module):
    """Where hooks see the outputs of `n_heads` attention heads, `(B, T, n_heads * d_head)`: returns a copy of its
    input (a copy, so that torch.export records an op of its own for it)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of `x`, so hooks see the heads' outputs as this module's output."""
        return x.clone()


def attention_bias(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, scores: torch.Tensor,
                   heads: int) -> torch.Tensor:
    """What the masks add to the scores `(B, heads, T, S)`: 0 where attended, -inf (a boolean mask's True) or the
    float mask's value elsewhere; `attn_mask` is `(T, S)` or `(B * heads, T, S)`, `key_padding_mask` `(B, S)`."""
    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(mask, -math.inf)
        return mask.to(scores.dtype)

    bias = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if attn_mask is not None:
        bias = bias + (additive(attn_mask).view(-1, heads, *attn_mask.shape[-2:]) if attn_mask.dim() == 3
                       else additive(attn_mask))
    if key_padding_mask is not None:
        bias = bias + additive(key_padding_mask)[:, None, None, :]
    return bias


fx.wrap("attention_bias")  # a leaf for torch.fx: its branches on dtype and rank run on real tensors


class UnfusedMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` computed op by op, its parameters shared, the heads visible through `heads`."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise BadInputError("nn.MultiheadAttention with add_bias_kv or add_zero_attn: its heads cannot be "
                                "assayed yet; exclude its layers with `layers`")
        self.embed_dim, self.num_heads, self.head_dim = mha.embed_dim, mha.num_heads, mha.head_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            value = getattr(mha, name)
            if value is not None:
                self.register_parameter(name, value)
            else:
                setattr(self, name, None)
        self.heads = HeadTap(mha.num_heads)
        self.out_proj = mha.out_proj

    def _project(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th of the q, k, v projections, `(B, heads, T, d_head)`."""
        e = self.embed_dim
        if self.in_proj_weight is not None:
            weight = self.in_proj_weight[k * e:(k + 1) * e]
        else:
            weight = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[k]
        bias = self.in_proj_bias[k * e:(k + 1) * e] if self.in_proj_bias is not None else None
        return F.linear(x, weight, bias).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`nn.MultiheadAttention.forward`, op by op: the output and, with `need_weights`, the attention weights."""
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-2, -1)     # (B, heads, T, S)
        if attn_mask is not None or key_padding_mask is not None:  # is_causal comes with its attn_mask in torch
            scores = scores + attention_bias(attn_mask, key_padding_mask, scores, self.num_heads)
        weights = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)
        out = self.out_proj(self.heads((weights @ v).transpose(1, 2).flatten(2)))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


class UnfusedEncoderLayer(nn.Module):
    """`nn.TransformerEncoderLayer` computed op by op (eval-mode dropout included), sharing its modules."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        self.self_attn = UnfusedMultiheadAttention(layer.self_attn)
        self.linear1, self.dropout, self.linear2 = layer.linear1, layer.dropout, layer.linear2
        self.norm1, self.norm2, self.dropout1, self.dropout2 = layer.norm1, layer.norm2, layer.dropout1, layer.dropout2
        self.norm_first = layer.norm_first
        act = layer.activation
        if isinstance(act, nn.Module):
            self.activation = act
        elif act in ACTIVATION_MODULES:
            self.activation = ACTIVATION_MODULES[act]()
        else:
            raise BadInputError(f"nn.TransformerEncoderLayer with activation {act!r}: give it an activation module "
                                "(nn.ReLU(), nn.GELU(), ...) so its MLP neurons can be found")

    def _sa(self, x: torch.Tensor, mask: torch.Tensor | None, padding: torch.Tensor | None) -> torch.Tensor:
        return self.dropout1(self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding,
                                            need_weights=False)[0])

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """`nn.TransformerEncoderLayer.forward`, op by op."""
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask))
        return self.norm2(x + self._ff(x))


class UnfusedEncoder(nn.Module):
    """`nn.TransformerEncoder`: its (unfused) layers in turn, then its final norm."""

    def __init__(self, encoder: nn.TransformerEncoder):
        super().__init__()
        self.layers = nn.ModuleList(UnfusedEncoderLayer(layer) for layer in encoder.layers)
        self.norm = encoder.norm

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool | None = None) -> torch.Tensor:
        """`nn.TransformerEncoder.forward`: each layer in turn, then the final norm."""
        for layer in self.layers:
            src = layer(src, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
        return self.norm(src) if self.norm is not None else src


def _unfused(module: nn.Module) -> nn.Module:
    """The stand-in of one `REPLACED` module, in its train/eval mode."""
    if isinstance(module, nn.TransformerEncoder):
        stand_in = UnfusedEncoder(module)
    elif isinstance(module, nn.TransformerEncoderLayer):
        stand_in = UnfusedEncoderLayer(module)
    else:
        stand_in = UnfusedMultiheadAttention(module)
    for new in stand_in.modules():
        new.training = module.training
    return stand_in


def unfused_attention(model: nn.Module) -> nn.Module:
    """`model` itself when it holds no torch.nn attention module; else a copy sharing its parameters and buffers
    (same state-dict keys) with each outermost `REPLACED` module swapped for its unfused stand-in."""
    targets = [name for name, m in model.named_modules() if isinstance(m, REPLACED)]
    outermost = [n for n in targets if not any(n.startswith(f"{o}.") for o in targets if o != n)]
    if not outermost:
        return model
    if isinstance(model, REPLACED):
        return _unfused(model)
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    memo.update({id(model.get_submodule(n)): model.get_submodule(n) for n in outermost})  # shared, not copied
    copied = copy.deepcopy(model, memo)
    for name in outermost:
        path, _, field = name.rpartition(".")
        setattr(copied.get_submodule(path), field, _unfused(model.get_submodule(name)))
    return copied
