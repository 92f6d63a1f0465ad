"""Helpers shared by the tests (plain functions and tiny models); fixtures live in conftest.py."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn

import slimc
from slimc.passes import registry


# ---- numbers -------------------------------------------------------------------------

def assert_outputs_close(ref, got, rel: float = 1e-5) -> None:
    """Every output pair has the same shape and max |ref - got| <= rel * max |ref| (and is finite)."""
    ref, got = list(ref), list(got)
    assert len(ref) == len(got), f"{len(ref)} outputs before, {len(got)} after"
    for i, (a, b) in enumerate(zip(ref, got)):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape, f"output {i}: shape {a.shape} became {b.shape}"
        scale = max(float(np.max(np.abs(a))), 1e-12)
        err = float(np.max(np.abs(a - b)))
        assert np.isfinite(err) and err <= rel * scale, f"output {i}: max abs err {err:.3g} > {rel:g} x {scale:.3g}"


def fresh_inputs(program, seed: int = 4321):
    """Random numpy inputs shaped like the program's example inputs, not the ones any pass saw."""
    return program.random_inputs(seed=seed)


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running stats and affine parameters (defaults make BN ~ identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return module.eval()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bn_modules(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---- tiny models ---------------------------------------------------------------------

class TinyCNN(nn.Module):
    """conv-bn-relu, depthwise conv-bn-relu, pool, linear: the smallest thing fuse-bn and to-onnx exercise."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def program_of(module: nn.Module, *example_inputs, **kwargs):
    """An FX-level Program of `module` (checked by torch.export through slimc's frontend)."""
    return slimc.load_program(module, example_inputs, **kwargs)


def aten_ops(program) -> dict:
    """ATen op name -> count in the program's exported graph ('conv2d', 'batch_norm', 'linear', ...)."""
    from collections import Counter

    return dict(Counter(n.target._overloadpacket.__name__ for n in program.exported().graph.nodes
                        if n.op == "call_function" and hasattr(n.target, "_overloadpacket")))


# ---- tiny ONNX models ----------------------------------------------------------------

def make_onnx(nodes, inputs, outputs, initializers=(), opset: int = 17, name: str = "g"):
    """An onnx.ModelProto from helper pieces; `inputs`/`outputs` are (name, shape) float tensors."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        list(nodes), name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="slimc-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def init(name: str, array) -> "onnx.TensorProto":
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def ort_run(model, feeds: dict) -> list[np.ndarray]:
    """Run an ONNX model with onnxruntime directly (no slimc code), graph optimizations off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def op_types(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ---- CLI and registry ----------------------------------------------------------------

@contextlib.contextmanager
def temporary_pass(cls):
    """Register `cls` (a test-only pass) for the duration of the block, then remove it from the registry."""
    assert cls.name not in registry.registered_passes(), f"test pass name '{cls.name}' already taken"
    slimc.register_pass(cls)
    try:
        yield cls
    finally:
        registry._REGISTRY.pop(cls.name, None)


def onnx_program(model):
    """An ONNX-level Program of an in-memory model (static input shapes from the graph)."""
    return slimc.load_program(model)


def feeds_for(model, seed: int = 7) -> dict:
    """Random float inputs for every (non-initializer) graph input, by name."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def check_same_function(before, after, seeds=(7, 8), rel: float = 1e-6) -> None:
    """`after` computes what `before` did (onnxruntime, fresh random inputs)."""
    for seed in seeds:
        feeds = feeds_for(before, seed)
        assert_outputs_close(ort_run(before, feeds), ort_run(after, feeds), rel=rel)


def zero_removed_channels(analysis, removed) -> None:
    """On an ATen-level prune analysis: make every removed channel exactly 0 where it is produced (weights,
    biases, norm affine) and removed table entries 0, so removing them changes no output."""
    from slimc.passes.fx.prune.module_cut import _tensor
    from slimc.passes.fx.prune.shrink import Cut

    cut = Cut(analysis, removed)
    producers = {(m, s) for _, m, s in analysis.tracker.producers}
    with torch.no_grad():
        for (fqn, axis), atoms in analysis.tracker.slots.items():
            if fqn.endswith(("#in", "#all")):
                continue
            t = _tensor(analysis.module, fqn)
            idx = cut.removed_at(atoms).nonzero().flatten()
            if idx.numel() and isinstance(t, nn.Parameter) and ((fqn, axis) in producers or t.dim() == 1):
                t.index_fill_(axis, idx, 0.0)
        for fqn, label in analysis.tracker.params.items():
            _tensor(analysis.module, fqn).masked_fill_(cut.removed_at(label), 0.0)
