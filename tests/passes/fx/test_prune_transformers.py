"""prune-channels on Hugging Face transformers (tiny random configs, built offline): heads (with
grouped-query attention), MLP units and the hidden size are cut in the user's own model, the config
follows, save_pretrained + from_pretrained reload it, and generate() runs on the decoders."""

from __future__ import annotations

import copy

import pytest
import torch

from slimc.ir.program import Program
from slimc.passes.fx.prune_channels import PruneChannels

transformers = pytest.importorskip("transformers")


def _ids(vocab=100, length=8):
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(1))


def _prune(model, *inputs, **options):
    model = model.eval()
    return PruneChannels(**{"ratio": 0.5, **options}).apply(Program(model, inputs, ("input",), ("output",),
                                                                    original=model))


def _reload(model, tmp_path, *inputs):
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want, got = model(*inputs), back(*inputs)
    torch.testing.assert_close(got[0], want[0])
    return back


def test_llama_gqa_heads_mlp_and_hidden(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=100, use_cache=False, bos_token_id=0,
                                   eos_token_id=0, pad_token_id=0)
    dense = transformers.LlamaForCausalLM(cfg).eval()
    ids = _ids()
    result = _prune(copy.deepcopy(dense), ids, round_to=1, min_channels=1)
    model = result.program.ir
    attn = model.model.layers[0].self_attn
    # one key/value head goes with its group of two query heads
    assert attn.q_proj.out_features == 32 and attn.k_proj.out_features == 16 == attn.v_proj.out_features
    assert attn.o_proj.in_features == 32 and model.model.layers[0].mlp.gate_proj.out_features == 64
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
    assert model.config.intermediate_size == 64 and model.config.head_dim == 16
    assert model.config.hidden_size == model.model.embed_tokens.embedding_dim == 32
    assert result.details["layer_macs_after"] <= 0.55 * result.details["layer_macs_before"]
    with torch.no_grad():
        assert model(ids).logits.shape == dense(ids).logits.shape
    _reload(model, tmp_path, ids)
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 11)


def test_gpt2_fused_qkv_heads_cut_consistently(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32, use_cache=False,
                                  bos_token_id=0, eos_token_id=0)
    model = _prune(transformers.GPT2LMHeadModel(cfg), _ids()).program.ir
    attn = model.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (32, 96) and attn.c_attn.nf == 96 and attn.split_size == 32
    assert attn.c_proj.weight.shape == (32, 32) and model.config.n_head == 2 and model.config.n_embd == 32
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    back = _reload(model, tmp_path, _ids())
    assert back.transformer.h[1].mlp.c_fc.nf == model.config.n_inner == 128
    assert model.generate(_ids(), max_new_tokens=3, do_sample=False).shape == (1, 11)


def test_gpt2_heads_are_whole_heads_of_q_k_and_v():
    """Zero two whole heads (their q, k and v columns) in the dense model: pruning those heads exactly
    reproduces it, so the kept columns of q, k and v belong to the same heads."""
    from slimc.passes.fx.prune import choose_removals
    from slimc.passes.fx.prune.aten_graph import analyze_module
    from slimc.passes.fx.prune.module_cut import cut_module

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=50, n_positions=16, use_cache=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = _ids(50)
    analysis = analyze_module(model, (ids,))
    heads = next(g for g in analysis.groups if g.name == "transformer.h.0.attn.c_attn")
    assert heads.size == 4 and heads.width == 48
    with torch.no_grad():
        for part in range(3):  # q, k, v of heads 1 and 3
            for h in (1, 3):
                cols = slice(part * 64 + h * 16, part * 64 + h * 16 + 16)
                model.transformer.h[0].attn.c_attn.weight[:, cols] = 0
                model.transformer.h[0].attn.c_attn.bias[cols] = 0
        want = model(ids).logits
    removed = choose_removals([heads], [torch.tensor([1.0, 0.0, 1.0, 0.0])], 0.5)
    assert removed[heads.name].tolist() == [1, 3]
    cut_module(analysis, removed)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-4)


def test_bert_prunes_heads_and_mlp_and_says_why_it_cannot_reload():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=100)
    result = _prune(transformers.BertModel(cfg), _ids())
    layer = result.program.ir.encoder.layer[0]
    assert layer.attention.self.query.out_features == 32 and layer.intermediate.dense.out_features == 64
    assert result.program.ir(_ids()).last_hidden_state.shape == (1, 8, 64)  # the model's output keeps its width
    assert any("will not reload" in n for n in result.details["notes"])


@pytest.mark.parametrize("kind", ["distilbert", "vit"])
def test_classifiers_reload(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "distilbert":
        model = transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
            dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=100))
        x = _ids()
    else:
        model = transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
            patch_size=8, num_labels=10))
        x = torch.randn(1, 3, 32, 32)
    result = _prune(model, x)
    assert result.details["layer_macs_after"] <= 0.55 * result.details["layer_macs_before"]
    assert "notes" not in result.details or not any("reload" in n for n in result.details["notes"])
    _reload(result.program.ir, tmp_path, x)
