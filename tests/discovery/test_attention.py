"""torch.nn transformers (SPEC S9): the unfused stand-ins equal torch's modules, and their heads and MLP neurons are
assayed like the zoo's (fast engine equal to plain; tolerances as in helpers/engines.py)."""

from __future__ import annotations

import pytest
import torch
from helpers.engines import assert_fast_equals_plain
from torch import nn

from resetassay import AssayConfig, assay_model
from resetassay.discovery.attention import UnfusedEncoder, UnfusedMultiheadAttention, unfused_attention
from resetassay.discovery.sequences import next_token_targets
from resetassay.discovery.taps import discovery_route, tap_unit_layers
from resetassay.discovery.units import unit_layers
from resetassay.errors import BadInputError
from resetassay.scoring.reference import unit_references

CLOSE = {"atol": 1e-5, "rtol": 1e-5}


class EncoderLM(nn.Module):
    """Token ids -> nn.TransformerEncoder under a causal mask -> next-token logits (B, T, V)."""

    def __init__(self, vocab: int = 20, d: int = 16, heads: int = 4, layers: int = 2, batch_first: bool = True,
                 norm_first: bool = False, activation: str = "relu"):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 32, dropout=0.1, activation=activation,
                                           batch_first=batch_first, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        self.batch_first = batch_first

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.encoder(x, mask=mask, is_causal=True)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.head(x)


class EncoderClassifier(nn.Module):
    """Features (B, T, 8) -> linear -> one nn.TransformerEncoderLayer (GELU module) -> mean over T -> (B, 3)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 12)
        self.layer = nn.TransformerEncoderLayer(12, 3, 24, dropout=0.0, activation=nn.GELU(), batch_first=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layer(self.inp(x)).mean(dim=1))


def _ids(n: int = 12, t: int = 7, vocab: int = 20) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(1))


def _tapped(factory):
    """A seeded model in eval mode, 24 token sequences, its tapped copy, unit layers and references (first 12)."""
    torch.manual_seed(0)
    model = factory().eval()
    ids = _ids(24)
    tapped = tap_unit_layers(model, ids[:2])
    layers = unit_layers(tapped, ids[:2])
    return model, ids, tapped, layers, unit_references(tapped, layers, ids[:12])


@pytest.mark.slow
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first, activation", [(False, "relu"), (True, "gelu")])
def test_encoder_lm_is_unfused_equal_and_its_heads_and_neurons_found(batch_first, norm_first, activation):
    torch.manual_seed(0)
    model = EncoderLM(batch_first=batch_first, norm_first=norm_first, activation=activation).eval()
    ids = _ids()
    tapped = tap_unit_layers(model, ids[:2])
    with torch.no_grad():  # eval, no grad: torch's own layer may take its fused path; the stand-in never does
        torch.testing.assert_close(tapped(ids), model(ids), **CLOSE)
    layers = unit_layers(tapped, ids[:2])
    assert [(la.name, la.kind, la.n_units) for la in layers] == [
        ("encoder.layers.0.self_attn.heads", "head", 4), ("encoder.layers.0.activation", "token", 32),
        ("encoder.layers.1.self_attn.heads", "head", 4), ("encoder.layers.1.activation", "token", 32)]
    heads, neurons = layers[:2]
    assert heads.group == 4 and heads.consumer is model.encoder.layers[0].self_attn.out_proj
    assert neurons.producer is model.encoder.layers[0].linear1 and neurons.consumer is model.encoder.layers[0].linear2
    ours, theirs = tapped.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    assert ours.keys() == theirs.keys() and all(ours[k] is theirs[k] for k in theirs)


@pytest.mark.slow
def test_lesions_of_encoder_heads_are_never_skipped_and_fast_equals_plain():
    model, ids, tapped, layers, refs = _tapped(EncoderLM)
    shocks = assert_fast_equals_plain(tapped, layers, refs, ids[12:])
    for layer in layers:
        assert (shocks["l1"][layer.name] > 0).all(), layer.name


def test_unfused_attention_equals_torch_with_masks_weights_and_separate_projections():
    torch.manual_seed(0)
    for mha in (nn.MultiheadAttention(12, 3, batch_first=True),
                nn.MultiheadAttention(12, 4, kdim=6, vdim=5, batch_first=False)):
        mha.eval()
        ours = UnfusedMultiheadAttention(mha)
        b, t, s = 3, 5, 6
        q = torch.randn(b, t, 12) if mha.batch_first else torch.randn(t, b, 12)
        kdim, vdim = mha.kdim, mha.vdim
        k = torch.randn(b, s, kdim) if mha.batch_first else torch.randn(s, b, kdim)
        v = torch.randn(b, s, vdim) if mha.batch_first else torch.randn(s, b, vdim)
        padding = torch.zeros(b, s, dtype=torch.bool)
        padding[0, -2:] = True
        for attn_mask in (None, torch.rand(t, s) < 0.3, torch.randn(b * mha.num_heads, t, s)):
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                attn_mask[:, 0] = False  # every query attends somewhere
            pad = padding if attn_mask is None or attn_mask.dtype == torch.bool else \
                torch.zeros(b, s).masked_fill(padding, float("-inf"))  # torch wants both masks of one type
            for average in (True, False):
                want = mha(q, k, v, key_padding_mask=pad, attn_mask=attn_mask, average_attn_weights=average)
                got = ours(q, k, v, key_padding_mask=pad, attn_mask=attn_mask, average_attn_weights=average)
                torch.testing.assert_close(got[0], want[0], **CLOSE)
                torch.testing.assert_close(got[1], want[1], **CLOSE)


def test_unfused_copy_shares_parameters_and_leaves_the_model_alone():
    model = EncoderLM()
    copy = unfused_attention(model)
    assert isinstance(copy.encoder, UnfusedEncoder) and isinstance(model.encoder, nn.TransformerEncoder)
    assert copy.embed is not model.embed and copy.embed.weight is model.embed.weight
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    assert unfused_attention(plain) is plain


def test_attention_with_bias_kv_is_refused_by_name():
    with pytest.raises(BadInputError, match="add_bias_kv"):
        UnfusedMultiheadAttention(nn.MultiheadAttention(8, 2, add_bias_kv=True))


def test_encoder_classifier_assays_heads_and_neurons_with_class_logits():
    torch.manual_seed(0)
    model = EncoderClassifier()
    x = torch.randn(40, 5, 8)
    y = torch.randint(0, 3, (40,))
    result = assay_model(model, (x[:20], y[:20]), (x[20:], y[20:]),
                         config=AssayConfig(utilities=["gxd", "contribution", "oracle"], metrics=["l1", "kl"]))
    assert set(result.units["layer"]) == {"layer.self_attn.heads", "layer.activation"}
    assert result.units.groupby("layer").size().to_dict() == {"layer.activation": 24, "layer.self_attn.heads": 3}
    assert result.notes[result.notes.utility != "verdict"].empty  # contribution applies to both: heads read by
    # out_proj, neurons by linear2 (reliability flags aside)
    assert 0 <= result.checkpoints["probe_accuracy"].iloc[0] <= 1
    assert discovery_route(tap_unit_layers(model.eval(), x[:2])) == "fx"


def test_encoder_lm_assay_by_next_token_targets():
    torch.manual_seed(0)
    model = EncoderLM()
    ids = _ids(16)
    y = next_token_targets(ids)
    result = assay_model(model, (ids[:8], y[:8]), (ids[8:], y[8:]),
                         config=AssayConfig(utilities=["gxd", "gxi", "activation", "oracle"], metrics=["l1"]))
    summary = result.summary.query("scope == 'ALL' and utility == 'oracle'")
    assert summary["spearman"].iloc[0] == pytest.approx(1.0)
    assert result.units["shock_l1"].gt(0).all()


class HandAttention(nn.Module):
    """Causal self-attention as people write it (nanoGPT style): c_attn, n_head, scaled_dot_product_attention."""

    def __init__(self, d: int = 16, n_head: int = 4):
        super().__init__()
        self.n_head, self.c_attn, self.c_proj = n_head, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        q, k, v = (t.view(x.shape[0], x.shape[1], self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).flatten(2))


class HandGPT(nn.Module):
    def __init__(self, vocab: int = 20, d: int = 16):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), HandAttention(d), nn.LayerNorm(d)
        self.fc, self.proj, self.head = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids)
        x = x + self.attn(self.ln1(x))
        x = x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))
        return self.head(x)


def test_hand_written_attention_gets_its_heads_tapped_by_name():
    model, ids, tapped, layers, refs = _tapped(HandGPT)
    assert [(la.name, la.kind, la.n_units) for la in layers] == [("attn.heads", "head", 4), ("gelu@0", "token", 64)]
    assert layers[0].consumer is model.attn.c_proj and layers[1].producer is model.fc
    shocks = assert_fast_equals_plain(tapped, layers, refs, ids[12:])
    assert (shocks["l1"]["attn.heads"] > 0).all()
    # clamping head 2 by the tap equals setting that head's slice of c_proj's input by hand
    head = refs["attn.heads"][2]

    def by_hand(_m, args):
        h = args[0].clone()
        h[..., 8:12] = head
        return (h,)

    handle = model.attn.c_proj.register_forward_pre_hook(by_hand)
    with torch.no_grad():
        want = model(ids[12:])
    handle.remove()
    from resetassay.lesion.plain import clamped

    with clamped([(layers[0], torch.tensor([2]), refs["attn.heads"][[2]])]), torch.no_grad():
        got = tapped(ids[12:])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


class TimmStyleViT(nn.Module):
    """A ViT as timm writes its blocks (Attention with num_heads, qkv, proj; Mlp fc1 -> GELU -> fc2), class token
    logits (B, C)."""

    def __init__(self, d: int = 12, heads: int = 3):
        super().__init__()
        self.patch = nn.Linear(8, d)
        self.attn = nn.Module()
        self.attn.num_heads, self.attn.qkv, self.attn.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.act, self.fc2, self.head = nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d), nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        qkv = self.attn.qkv(x).unflatten(-1, (3, self.attn.num_heads, -1)).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.attn.proj(y.transpose(1, 2).flatten(2))
        x = x + self.fc2(self.act(self.fc1(x)))
        return self.head(x[:, 0])


def test_a_timm_style_vit_classifier_is_assayed_by_heads_and_neurons():
    torch.manual_seed(0)
    model = TimmStyleViT()
    x, y = torch.randn(40, 5, 8), torch.randint(0, 3, (40,))
    result = assay_model(model, (x[:20], y[:20]), (x[20:], y[20:]),
                         config=AssayConfig(utilities=["gxd", "contribution", "oracle"], metrics=["l1"]))
    assert result.units.groupby("layer").size().to_dict() == {"act": 24, "attn.heads": 3}
    assert result.notes[result.notes.utility != "verdict"].empty and result.units["shock_l1"].gt(0).all()
