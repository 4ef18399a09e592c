"""Hugging Face language models built from a config (random init, nothing downloaded): GPT-2 (Conv1D, GELU MLP)
and Llama (gated MLP, RMSNorm, rotary, grouped-query attention) assayed by their heads and MLP neurons (SPEC S9).
Skipped where `transformers` is not installed. Tolerances: helpers/engines.py for the engines; 1e-6 for values
computed by hand in float64."""

from __future__ import annotations

import pytest
import torch
from helpers.engines import assert_fast_equals_plain

from resetassay import AssayConfig, assay_model
from resetassay.discovery.outputs import select_output
from resetassay.discovery.sequences import next_token_targets
from resetassay.discovery.taps import discovery_route, tap_unit_layers
from resetassay.discovery.units import unit_layers
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import unit_scores

transformers = pytest.importorskip("transformers")
VOCAB = 40
TOL = {"atol": 1e-6, "rtol": 1e-6}


def _gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=4, n_inner=24, vocab_size=VOCAB, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=20,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                      max_position_embeddings=16, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(config)


def _tapped(factory, double: bool = False):
    torch.manual_seed(0)
    model = factory().eval()
    if double:
        model = model.double()
    ids = torch.randint(0, VOCAB, (24, 6), generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="reading its logits from 'logits'"):
        selected = select_output(model, None, ids[:2])
    return model, selected, tap_unit_layers(selected, ids[:2]), ids


@pytest.mark.parametrize("factory, names", [
    (_gpt2, ["transformer.h.0.attn.heads", "transformer.h.0.mlp.neurons", "transformer.h.1.attn.heads",
             "transformer.h.1.mlp.neurons"]),
    (_llama, ["model.layers.0.self_attn.heads", "model.layers.0.mlp.neurons", "model.layers.1.self_attn.heads",
              "model.layers.1.mlp.neurons"]),
])
def test_heads_and_mlp_neurons_are_declared_and_the_copy_equals_the_model(factory, names):
    model, selected, tapped, ids = _tapped(factory)
    assert discovery_route(tapped) == "transformers"
    layers = unit_layers(tapped, ids[:2])
    assert [la.name for la in layers] == names
    assert [(la.kind, la.n_units) for la in layers[:2]] == [("head", 4), ("token", layers[1].consumer.weight.shape[
        0 if factory is _gpt2 else 1])]
    with torch.no_grad():
        torch.testing.assert_close(tapped(ids), selected(ids), rtol=0, atol=0)
    ours, theirs = tapped.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    assert ours.keys() == theirs.keys() and all(ours[k] is theirs[k] for k in theirs)


@pytest.mark.slow
@pytest.mark.parametrize("factory", [_gpt2, _llama])
def test_fast_engine_equals_plain(factory):
    _, _, tapped, ids = _tapped(factory)
    layers = unit_layers(tapped, ids[:2])
    refs = unit_references(tapped, layers, ids[:12])
    shocks = assert_fast_equals_plain(tapped, layers, refs, ids[12:])
    assert all((shocks["l1"][la.name] > 0).all() for la in layers)


def test_llama_neurons_are_the_gated_product():
    _, _, tapped, ids = _tapped(_llama, double=True)
    layer = unit_layers(tapped, ids[:2])[1]
    mlp = tapped.get_submodule("model.layers.0.mlp")  # the copy's module (sharing the model's weights)
    seen = {}
    handles = [layer.module.register_forward_hook(lambda m, i, o: seen.__setitem__("units", o)),
               mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))]
    with torch.no_grad():
        tapped(ids)
    for h in handles:
        h.remove()
    x = seen["x"]
    torch.testing.assert_close(seen["units"], mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), **TOL)


def test_gpt2_conv1d_weights_are_read_transposed():
    """contribution and mc_adaptable of GPT-2's MLP neurons by hand: Conv1D stores (in, out)."""
    model, _, tapped, ids = _tapped(_gpt2, double=True)
    layers = unit_layers(tapped, ids[:2])
    refs = unit_references(tapped, layers, ids)
    stats = calibration_stats(tapped, layers, ids, next_token_targets(ids), refs, {"abs_act", "abs_dev"})
    scores, notes = unit_scores(["contribution", "mc_adaptable"], layers, stats)
    mlp = model.transformer.h[0].mlp
    neurons, heads = layers[1], layers[0]
    w_out, w_in = mlp.c_proj.weight.detach().abs(), mlp.c_fc.weight.detach().abs()  # (24, 16), (16, 24)
    torch.testing.assert_close(scores["contribution"][neurons.name].double(),
                               stats[neurons.name].abs_act.double() * w_out.sum(dim=1), **TOL)
    torch.testing.assert_close(scores["mc_adaptable"][neurons.name].double(),
                               stats[neurons.name].abs_dev.double() * w_out.sum(dim=1) / w_in.sum(dim=0), **TOL)
    proj = model.transformer.h[0].attn.c_proj.weight.detach().abs()  # (16 = 4 heads x 4, 16)
    torch.testing.assert_close(scores["contribution"][heads.name].double(),
                               stats[heads.name].abs_act.double() * proj.view(4, 4, 16).sum(dim=(1, 2)), **TOL)
    assert ("mc_adaptable", heads.name) in notes


@pytest.mark.slow
def test_assay_model_on_input_ids_with_every_utility():
    model, _, _, ids = _tapped(_llama)
    y = next_token_targets(ids)
    with pytest.warns(UserWarning, match="logits"):
        result = assay_model(model, (ids[:12], y[:12]), (ids[12:], y[12:]), config=AssayConfig(metrics=["l1", "kl"]))
    assert set(result.units["layer"]) == {"model.layers.0.self_attn.heads", "model.layers.0.mlp.neurons",
                                          "model.layers.1.self_attn.heads", "model.layers.1.mlp.neurons"}
    gated = result.notes.query("utility == 'mc_adaptable' and layer.str.endswith('neurons')")["reason"]
    assert len(gated) == 2 and gated.str.contains("gated MLP").all()
    assert result.units["gxd_all"].notna().all()  # 40 outputs: within --max-classes


def test_model_by_type_name_is_built_from_its_config_and_refuses_downloads():
    from resetassay.errors import BadInputError
    from resetassay.io.checkpoint import import_factory

    kwargs = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 20, "num_attention_heads": 4,
              "vocab_size": VOCAB}
    model = import_factory("transformers:llama", kwargs)(**kwargs)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 16
    with pytest.raises(BadInputError, match="no model 'lama'; close matches: llama"):
        import_factory("transformers:lama")
    with pytest.raises(BadInputError, match="never downloads weights"):
        import_factory("transformers:gpt2", {"pretrained_model_name_or_path": "gpt2"})



@pytest.mark.slow
def test_right_padded_batches_give_what_each_sequence_gives_alone():
    """GPT-2 reads the attention mask of PAD-carrying ids: shocks and utilities of a padded batch are those of its
    sequences cut to their lengths (SPEC S9)."""
    from resetassay.discovery.sequences import padded_tokens, with_padding
    from resetassay.lesion import unit_shocks

    model, selected, tapped, ids = _tapped(_gpt2, double=True)
    lengths = [6, 4, 5, 2, 6, 3]
    mask = (torch.arange(6) < torch.tensor(lengths)[:, None]).long()
    x = with_padding(ids[:6], mask)
    padded = tap_unit_layers(padded_tokens(selected, [x]), x[:2])
    layers = unit_layers(padded, x[:2])
    refs = unit_references(tapped, unit_layers(tapped, ids[:2]), ids)
    got = unit_shocks(padded, layers, refs, x, ["l1", "kl"], engine="fast")
    single = unit_layers(tapped, ids[:2])
    each = [unit_shocks(tapped, single, refs, ids[i:i + 1, :n], ["l1", "kl"], engine="plain")
            for i, n in enumerate(lengths)]
    for metric in ("l1", "kl"):
        for la in layers:
            want = torch.stack([e[metric][la.name] for e in each]).mean(0)
            torch.testing.assert_close(got[metric][la.name], want, **TOL)
    stats = calibration_stats(padded, layers, x, next_token_targets(ids[:6], mask), refs, {"gxd", "abs_act"})
    alone = [calibration_stats(tapped, single, ids[i:i + 1, :n], next_token_targets(ids[i:i + 1, :n]), refs,
                               {"gxd", "abs_act"}) for i, n in enumerate(lengths)]
    for la in layers:
        for key in ("gxd", "abs_act"):
            want = torch.stack([getattr(a[la.name], key) for a in alone]).double().mean(0)
            torch.testing.assert_close(getattr(stats[la.name], key).double(), want, **TOL)


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_bert_and_distilbert_classifier_heads_are_found_behind_a_padding_wrapper(kind):
    """A BERT/DistilBERT classifier seen through a wrapper (as a padded batch with its mask is given to it): its
    attention heads are found by the traced graph (BertSelfAttention's heads are read by BertSelfOutput.dense,
    DistilBERT's by out_lin), not only its MLP neurons, and no "attention heads not found" warning."""
    import warnings

    transformers = pytest.importorskip("transformers")
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16, num_labels=3)
        model, want = transformers.BertForSequenceClassification(config), "m.bert.encoder.layer.0.attention.self.heads"
    else:
        config = transformers.DistilBertConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                                               max_position_embeddings=16, num_labels=3)
        model = transformers.DistilBertForSequenceClassification(config)
        want = "m.distilbert.transformer.layer.0.attention.heads"

    class Masked(torch.nn.Module):
        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.m(ids, attention_mask=(ids > 0).long()).logits

    ids = torch.randint(1, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    ids[0, 5:] = 0
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        tapped = tap_unit_layers(Masked(model.eval()), ids)
    assert want in {layer.name for layer in unit_layers(tapped, ids)}
    assert not [w for w in said if "attention heads not found" in str(w.message)]
