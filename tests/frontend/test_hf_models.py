"""Hugging Face transformers through the torch.export frontend: tiny configs, random weights, offline.

symbolic_trace could not take any of these; torch.export (non-strict) does. Outputs are ModelOutput
dataclasses (flattened, named by their keys); inputs are int64 token ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimc

transformers = pytest.importorskip("transformers")

VOCAB = 96


def _bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, use_cache=False))


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, use_cache=False))


@pytest.mark.slow
@pytest.mark.parametrize("build,outputs", [(_bert, ("last_hidden_state", "pooler_output")), (_gpt2, ("logits",)),
                                           (_llama, ("logits",))], ids=["bert", "gpt2", "llama"])
def test_hf_model_compiles_end_to_end_on_onnxruntime(build, outputs):
    torch.manual_seed(0)
    model = build().eval()
    ids = torch.randint(0, VOCAB, (1, 8))
    result = slimc.compile(model, ids, pipeline="fuse-bn,to-onnx,simplify", backend="onnxruntime",
                           fidelity_samples=2)
    report = result.report
    assert report["frontend"] == "torch.export"
    assert report["inputs"] == [{"name": "input", "shape": [1, 8], "dtype": "int64"}]
    assert result.program.output_names == outputs
    assert [o.name for o in result.onnx.graph.output] == list(outputs)
    assert report["passes"][1]["details"]["exporter"] == "dynamo"
    assert report["before"]["macs"] > 0 and report["fidelity"]["cosine"] > 0.99999
    # fresh token ids stay integer ids inside the vocabulary the example used
    xs = result.program.random_inputs(seed=7)
    assert xs[0].dtype == np.int64 and 0 <= xs[0].min() and xs[0].max() < VOCAB
    with torch.no_grad():
        ref = model(torch.from_numpy(xs[0]))
    want = [ref[name].numpy() for name in outputs]
    got = result.artifact.run(xs)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))
    # the FX-level module is still the user's class (generate() and kwargs keep working)
    assert type(result.module) is type(model)
