"""Frontend and lowering times: torch.export vs the old symbolic_trace path, dynamo vs TorchScript to-onnx.

Usage: .venv/bin/python tools/bench_frontend.py [--repeats 3] [--old-tree /path/to/old/checkout]

Each measurement runs in a fresh process (imports included once, then timed warm), interleaved
old/new so machine noise hits both; prints median and min. `--old-tree` points at a checkout of
slimc before the torch.export frontend (the symbolic_trace path) for the compile comparison.
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
import json, sys, time, warnings, tempfile, os
warnings.simplefilter("ignore")
import torch
what, model_name = sys.argv[1], sys.argv[2]

def build(name):
    if name == "resnet50":
        import torchvision
        return torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224)
    import transformers as T
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 32))
    if name == "bert":
        return T.BertModel(T.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=256, max_position_embeddings=64)).eval(), ids
    if name == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=1000, n_embd=128, n_layer=2, n_head=2, n_positions=64,
                                              use_cache=False)).eval(), ids
    return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                            use_cache=False)).eval(), ids

model, x = build(model_name)

def once():
    t = time.perf_counter()
    if what == "compile":
        import slimc
        slimc.compile(model, x, pipeline="fuse-bn,to-onnx,simplify", backend=None, fidelity_samples=0)
    elif what == "export":
        torch.export.export(model, (x,), strict=False)
    elif what in ("onnx-dynamo", "onnx-torchscript", "baseline-dynamo", "baseline-torchscript"):
        import onnx, onnxsim
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.onnx")
            if what.endswith("dynamo"):
                torch.onnx.export(model, (x,), dynamo=True, verbose=False).save(path)
            else:
                torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17)
            if what.startswith("baseline"):
                onnxsim.simplify(onnx.load(path))
    return time.perf_counter() - t

first = once()
print(json.dumps({"first": first, "warm": once()}))
'''


def run(tree: str, what: str, model: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    # cwd=tree: `python -c` puts the working directory ahead of PYTHONPATH, which would import this tree
    out = subprocess.run([sys.executable, "-c", CHILD, what, model], env=env, capture_output=True, text=True, cwd=tree,
                         timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old-tree", default=None)
    ap.add_argument("--models", default="resnet50,bert,gpt2,llama")
    ap.add_argument("--what", default="compile,export,onnx-dynamo,onnx-torchscript,baseline-dynamo,baseline-torchscript")
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for what in args.what.split(","):
            trees = [("new", HERE)] + ([("old", args.old_tree)] if (what == "compile" and args.old_tree) else [])
            times: dict = {name: {"first": [], "warm": []} for name, _ in trees}
            for _ in range(args.repeats):
                for name, tree in trees:  # interleaved
                    r = run(tree, what, model)
                    if "error" in r:
                        print(f"{model} {what} {name}: {r['error']}", flush=True)
                        continue
                    times[name]["first"].append(r["first"])
                    times[name]["warm"].append(r["warm"])
            for name, t in times.items():
                if t["warm"]:
                    row = (model, what if len(trees) == 1 else f"{what} ({name})",
                           statistics.median(t["warm"]), min(t["warm"]), statistics.median(t["first"]))
                    rows.append(row)
                    print(f"{row[0]:<9} {row[1]:<22} warm median {row[2]:6.2f} s  min {row[3]:6.2f} s  "
                          f"first call (imports) {row[4]:6.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
