"""Profiling one or more ONNX models on one or more backends, interleaved.

The machine is shared and noisy, so models and backends take turns, round by round: each round
runs every (model, backend) pair's profiled runs and then its plain runs. The end-to-end latency
is the median of the plain runs; layer times are averaged over the typical profiled runs (the
middle half by total, see `typical_runs`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from .names import GraphIndex, module_from_scoped_name
from .result import UNMATCHED, LayerTime, Profile
from .runtimes import timer_for

__all__ = ["ProfileOptions", "profile_artifact", "profile_models"]


@dataclass(frozen=True)
class ProfileOptions:
    """How much to run: `warmup` runs of each kind first, then `rounds` x `runs` of each kind."""

    warmup: int = 5
    runs: int = 10
    rounds: int = 3


def _settle() -> None:
    """Let the previous runtime's worker threads stop spinning before the next one is timed."""
    time.sleep(0.05)


def _module_macs(model, index: GraphIndex, feed) -> dict:
    """MACs per module for the shapes being run (the feed pins a dynamic batch)."""
    import torch

    from ..ir.stats import onnx_node_macs

    out: dict = {}
    for node, macs in onnx_node_macs(model, [torch.from_numpy(x) for x in feed]).items():
        module = index.modules.get(node, node)
        out[module] = out.get(module, 0) + macs
    return out


def typical_runs(runs: list[dict]) -> list[dict]:
    """The middle half of the profiled runs, ranked by their total layer time.

    A per-layer median is not what a typical run looks like on a shared machine: nearly every run is
    slowed somewhere, each time in a different layer, so the sum of per-layer medians falls far below
    the median run (resnet50 on 2 busy cores: 40 ms against 120 ms). Averaging each layer over the
    runs whose totals sit between the quartiles keeps the median's robustness and sums to the
    typical run, so it can be set against the median end-to-end latency.
    """
    ranked = sorted(runs, key=lambda run: sum(ms for _, ms in run.values()))
    cut = len(ranked) // 4
    return ranked[cut:len(ranked) - cut] or ranked


def _layers(runs: list[dict], index: GraphIndex | None) -> list[LayerTime]:
    kept = typical_runs(runs)
    ops, total = {}, {}
    for run in kept:
        for name, (op, ms) in run.items():
            ops.setdefault(name, op)
            total[name] = total.get(name, 0.0) + ms
    layers = []
    for name, ms in total.items():
        op = ops[name]
        node = index.match(name, op) if index else None
        if index is None:  # no ONNX graph (a saved OpenVINO IR): the layer name is all there is
            module = module_from_scoped_name(name.split("/WithoutBiases")[0]) or UNMATCHED
        else:
            module = index.modules[node] if node else UNMATCHED
        layers.append(LayerTime(name, op or "?", node, module, ms / len(kept)))
    layers.sort(key=lambda layer: -layer.ms)
    return layers


def profile_models(jobs: list[tuple[str, object, object]], inputs_for, options: ProfileOptions = ProfileOptions()
                   ) -> list[Profile]:
    """Profile several built artifacts, interleaved.

    jobs: (label, artifact, onnx.ModelProto or None[, FX GraphModule]) — the ONNX graph names the modules
          and counts MACs; the GraphModule it was exported from, when known, restores module paths the
          TorchScript exporter dropped.
    inputs_for(artifact): the numpy inputs to run it on.
    """
    jobs = [tuple(job) + (None,) * (4 - len(job)) for job in jobs]
    timers = [timer_for(job[1]) for job in jobs]
    feeds = [inputs_for(job[1]) for job in jobs]
    plain = [[] for _ in jobs]
    for timer, feed in zip(timers, feeds):
        timer.profiled(feed, options.warmup)
        timer.plain(feed, options.warmup)
    for _ in range(options.rounds):
        for i, (timer, feed) in enumerate(zip(timers, feeds)):
            _settle()
            timer.profiled(feed, options.runs)
            _settle()
            plain[i] += timer.plain(feed, options.runs)
    profiles = []
    for (label, artifact, model, graph_module), timer, feed, times in zip(jobs, timers, feeds, plain):
        index = GraphIndex.of(model, graph_module) if model is not None else None
        layers = _layers(timer.runs(skip_runs=options.warmup), index)
        macs = _module_macs(model, index, feed) if model is not None else {}
        profiles.append(Profile(artifact.backend, label, layers, statistics.median(times),
                                options.rounds * options.runs, macs,
                                {"warmup": options.warmup, "rounds": options.rounds,
                                 "end_to_end_min_ms": round(min(times), 4), **timer.details}))
    return profiles


def profile_artifact(artifact, model=None, inputs=None, options: ProfileOptions = ProfileOptions(),
                     label: str = "", graph_module=None) -> Profile:
    """Profile one built artifact (`model`: its ONNX graph, for module names and MACs; `graph_module`:
    the FX module it was exported from, if any).

    Example::

        result = slimc.compile(model, x, pipeline="fuse-bn,to-onnx,simplify", backend="onnxruntime")
        prof = profile_artifact(result.artifact, result.onnx)
        print(prof.profiled_ms, prof.end_to_end_ms)
    """
    return profile_models([(label, artifact, model, graph_module)],
                          lambda a: list(inputs) if inputs is not None else a.sample_inputs(), options)[0]
