"""prune-channels speed: the pass's own time in the compile report, this tree against another checkout.

Usage: .venv/bin/python tools/bench_prune.py [--repeats 5] [--old-tree /path/to/checkout] [--models resnet50,llama]

Each run is a fresh process that compiles `prune-channels{ratio=0.5}` (no backend, no fidelity
check) twice: the first compile's pass time includes one-off costs (lazy imports, the first
FakeTensorMode), the second is warm. The time is the report's per-pass seconds (what the CLI's
table prints); the frontend's torch.export capture happens before the pass and is not in it.
A third column times the pass alone on a Program with no export cached (as tools/zoo_sweep.py
does), which includes the pass's own torch.export. Runs of the two trees are interleaved so
machine noise hits both; prints median and min.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
import slimc

def build(name):
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision
        return torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224)
    import transformers as T
    cfg = T.LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    return T.LlamaForCausalLM(cfg).eval(), torch.randint(0, 1000, (1, 32))

model, x = build(sys.argv[1])
runs = []
for _ in range(2):
    r = slimc.compile(model, x, pipeline="prune-channels{ratio=0.5}", backend=None, fidelity_samples=0)
    rec = r.records[0]
    runs.append({"pass": rec.seconds, "analysis": rec.details.get("analysis_seconds", 0.0),
                 "macs": rec.details["layer_macs_after"] / rec.details["layer_macs_before"]})
# The pass alone on a program with no export cached (as tools/zoo_sweep.py times it): its export is in it.
import time
from slimc.ir.program import Program
from slimc.passes.fx.prune_channels import PruneChannels
start = time.perf_counter()
PruneChannels(ratio=0.5).apply(Program(model, (x,), ("input",), ("output",), original=model))
print(json.dumps({"first": runs[0], "warm": runs[1], "alone": {"pass": time.perf_counter() - start}}))
'''


def run(tree: str, model: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    # cwd=tree: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
    out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, cwd=tree, capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f})" if values else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--old-tree", default=None, help="another checkout of slimc, measured interleaved")
    ap.add_argument("--models", default="resnet50,llama")
    args = ap.parse_args()
    trees = [("this tree", HERE)] + ([("old tree", args.old_tree)] if args.old_tree else [])
    print("| model | tree | pass, first compile | pass, warm | analysis, warm | pass alone, with its export | "
          "layer MACs kept |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        times = {name: {"first": [], "warm": [], "analysis": [], "macs": [], "alone": []} for name, _ in trees}
        for _ in range(args.repeats):
            for name, tree in trees:  # interleaved
                r = run(tree, model)
                if "error" in r:
                    print(f"{model} {name}: {r['error']}", file=sys.stderr, flush=True)
                    continue
                t = times[name]
                t["first"].append(r["first"]["pass"])
                t["warm"].append(r["warm"]["pass"])
                t["analysis"].append(r["warm"]["analysis"])
                t["macs"].append(r["warm"]["macs"])
                t["alone"].append(r["alone"]["pass"])
        for name, t in times.items():
            macs = f"{t['macs'][0]:.2f}" if t["macs"] else "-"
            print(f"| {model} | {name} | {_cell(t['first'])} | {_cell(t['warm'])} | {_cell(t['analysis'])} | "
                  f"{_cell(t['alone'])} | {macs} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
