"""Prune model zoos with `prune-channels` (and Torch-Pruning beside it) and check every result.

Lists: torchvision classifiers (`tv`), timm models across families (`timm`, random weights,
pretrained=False), five Hugging Face transformers with tiny random configs (`hf`), torchvision video
(`video`) and segmentation (`seg`) models. For each model: prune the model itself (slimc exports it
with torch.export and cuts the user's module) at --ratio, check the output shape, export the pruned
model to ONNX, run it in ONNX Runtime, and count MACs on the exported ONNX before and after (one
counter for slimc and Torch-Pruning). A model *counts* when MACs drop to <= 0.55 of dense (at ratio
0.5) and ONNX Runtime gives the dense output shape. With --torch-pruning, Torch-Pruning 1.6.1
(comparison only) runs at the same settings (L2 magnitude, same ratio and round_to, last layer
ignored, MultiheadAttention heads given) and the same checks. One model at a time; rows are
appended to --out as they finish.

    .venv/bin/python tools/zoo_sweep.py --lists hf,video,seg,timm,tv --torch-pruning --out sweep.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn

TIMM = ("resnet18 resnet50d seresnext26d_32x4d resnest14d res2net50_14w_8s regnetx_002 regnety_002 efficientnet_b0 "
        "efficientnet_lite0 mobilenetv2_050 mobilenetv3_small_050 mobilenetv3_large_100 mnasnet_small ghostnet_100 "
        "hardcorenas_a fbnetc_100 tinynet_e lcnet_050 rexnet_100 densenet121 dla34 cspresnet50 ese_vovnet19b_dw "
        "hrnet_w18_small convnext_atto convnextv2_atto vit_tiny_patch16_224 deit_tiny_patch16_224 "
        "swin_tiny_patch4_window7_224 levit_128s mobilevit_xxs poolformer_s12 nf_resnet26 repvgg_a0 mixnet_s "
        "edgenext_xx_small fastvit_t8 efficientvit_b0 mobileone_s0 xcit_nano_12_p16_224").split()
HF = ["BertModel", "DistilBertForSequenceClassification", "ViTForImageClassification", "GPT2LMHeadModel",
      "LlamaForCausalLM"]
VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18", "s3d"]  # mvit_v2_s (16x224x224 fixed): out of memory here
SEG = ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]

# torchvision classifiers that need their training resolution (patch/window grids are fixed) or a minimum size.
_TV_SIZE = {"vit": 224, "swin": 224, "maxvit": 224, "inception_v3": 128, "googlenet": 64, "alexnet": 224,
            "vgg": 224}
_TV_BIG = {"vit_h_14": 632e6, "vit_l_16": 304e6, "vit_l_32": 306e6, "regnet_y_128gf": 644e6, "regnet_y_32gf": 145e6,
           "regnet_y_16gf": 84e6, "regnet_x_32gf": 107e6, "vgg": 140e6, "convnext_large": 198e6,
           "efficientnet_v2_l": 118e6}


class FirstOutput(nn.Module):
    """A model returning a dict or ModelOutput, seen through its first tensor (for ONNX and Torch-Pruning)."""

    def __init__(self, model, key):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        out = self.model(x)
        return out[self.key] if self.key is not None else out


# ---- building each list -------------------------------------------------------------------

def build(kind: str, name: str):
    """(model, input tensor) with random weights, seeded."""
    torch.manual_seed(0)
    if kind == "tv":
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
        size = next((s for p, s in _TV_SIZE.items() if name.startswith(p)), 64)
        return torchvision.models.get_model(name, weights=None, **kwargs).eval(), torch.randn(1, 3, size, size)
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False).eval()
        for size in (64, model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]):
            x = torch.randn(1, 3, size, size)
            try:
                with torch.no_grad():
                    model(x)
                return model, x
            except Exception:
                continue
        raise RuntimeError("no input size works")
    if kind == "video":
        import torchvision

        model = torchvision.models.get_model(name, weights=None).eval()
        shape = (1, 3, 16, 224, 224) if name.startswith(("mvit", "s3d")) else (1, 3, 8, 64, 64)
        return model, torch.randn(*shape)
    if kind == "seg":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, aux_loss=False).eval()
        return FirstOutput(model, "out").eval(), torch.randn(1, 3, 64, 64)
    if kind == "hf":
        return _hf(name)
    raise ValueError(kind)


def _hf(name: str):
    import transformers as T

    ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    common = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=100)
    if name == "BertModel":
        return FirstOutput(T.BertModel(T.BertConfig(hidden_size=128, **common)), "last_hidden_state").eval(), ids
    if name == "DistilBertForSequenceClassification":
        cfg = T.DistilBertConfig(dim=128, n_layers=2, n_heads=4, hidden_dim=256, vocab_size=100)
        return FirstOutput(T.DistilBertForSequenceClassification(cfg), "logits").eval(), ids
    if name == "ViTForImageClassification":
        cfg = T.ViTConfig(hidden_size=128, image_size=64, patch_size=8, num_labels=10, **common)
        cfg.vocab_size = None
        return FirstOutput(T.ViTForImageClassification(cfg), "logits").eval(), torch.randn(1, 3, 64, 64)
    if name == "GPT2LMHeadModel":
        cfg = T.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=100, n_positions=64, use_cache=False,
                           bos_token_id=0, eos_token_id=0)
        return FirstOutput(T.GPT2LMHeadModel(cfg), "logits").eval(), ids
    if name == "LlamaForCausalLM":
        cfg = T.LlamaConfig(hidden_size=128, num_key_value_heads=2, use_cache=False, bos_token_id=0, eos_token_id=0,
                            pad_token_id=0, **common)
        return FirstOutput(T.LlamaForCausalLM(cfg), "logits").eval(), ids
    raise ValueError(name)


# ---- checks ----------------------------------------------------------------------------------

def onnx_check(model, x, want_shape) -> tuple[int, int, str]:
    """Export, run in ONNX Runtime; returns (params, macs, error or '')."""
    import onnx
    import onnxruntime as ort

    from slimc.ir.stats import onnx_stats

    buf = io.BytesIO()
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"])
        except Exception:  # models TorchScript cannot take: the dynamo exporter
            buf = io.BytesIO()
            torch.onnx.export(model, (x,), buf, dynamo=True, input_names=["input"], verbose=False)
    proto = onnx.load_from_string(buf.getvalue())
    stats = onnx_stats(proto, (x,))
    if not stats.macs:  # shapes computed at run time (Shape -> Reshape): fold them, then count
        import onnxsim

        stats = onnx_stats(onnxsim.simplify(proto)[0], (x,))
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if tuple(out.shape) != tuple(want_shape):
        return stats.params, stats.macs, f"onnx output {tuple(out.shape)} != {tuple(want_shape)}"
    return stats.params, stats.macs, ""


def run_slimc(model, x, args):
    from slimc.ir.program import Program
    from slimc.passes.fx.prune_channels import PruneChannels

    program = Program(model, (x,), ("input",), ("output",), original=model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = PruneChannels(ratio=args.ratio, criterion="l2", round_to=args.round_to,
                               min_channels=args.min_channels).apply(program)
    return result.program.ir, time.perf_counter() - start, result.details


def run_tp(model, x, args):
    import torch_pruning as tp

    leaves = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))]
    ignored = [leaves[-1]] if leaves else []  # the last layer: its outputs are the model's outputs
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=args.ratio, ignored_layers=ignored, round_to=args.round_to,
                                  num_heads=heads)
    pruner.step()
    return model, time.perf_counter() - start


def _first(out):
    from torch.utils._pytree import tree_leaves

    return next(t for t in tree_leaves(out) if isinstance(t, torch.Tensor))


def _counts(macs0, macs1, status) -> bool:
    return status == "ok" and bool(macs0) and macs1 is not None and macs1 <= 0.55 * macs0


def sweep_one(kind, name, args) -> dict:
    row = {"list": kind, "model": name}
    model, x = build(kind, name)
    row["input"] = "x".join(str(s) for s in x.shape[2:]) if x.dim() > 2 else str(x.shape[-1])
    with torch.no_grad():
        want = _first(model(x)).shape
    row["params0"], row["macs0"], _ = onnx_check(model, x, want)
    try:
        with _time_limit(args.timeout):
            pruned, row["sec"], details = run_slimc(model, x, args)
        with torch.no_grad():
            got = _first(pruned(x)).shape
        if got != want:
            raise RuntimeError(f"output {tuple(got)} != {tuple(want)}")
        row["params1"], row["macs1"], err = onnx_check(pruned, x, want)
        row["status"] = "ok" if not err else "FAIL " + err
        if "warning" in details:
            row["status"] += " (warned)"
    except Exception as exc:
        row["status"] = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        if args.verbose:
            traceback.print_exc()
    row["counts"] = _counts(row["macs0"], row.get("macs1"), row["status"].split(" (")[0])
    if args.torch_pruning:
        try:
            with _time_limit(args.timeout):
                tp_model, row["tp_sec"] = run_tp(build(kind, name)[0], x, args)
            row["tp_params"], row["tp_macs"], err = onnx_check(tp_model, x, want)
            row["tp_status"] = "ok" if not err else "FAIL " + err
        except Exception as exc:
            row["tp_status"] = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
        row["tp_counts"] = _counts(row["macs0"], row.get("tp_macs"), row["tp_status"])
    return row


@contextlib.contextmanager
def _time_limit(seconds: int):
    """Raise TimeoutError after `seconds` (SIGALRM; main thread, Unix only)."""
    def _raise(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- the table -------------------------------------------------------------------------------

def _share(a, b):
    return f"{b / a:.2f}" if a and b is not None else "-"


HEADER = ("| list | model | input | dense MMACs | slimc MAC share | slimc s | slimc | counts | TP MAC share | TP s | TP | "
          "TP counts |\n|---|---|---|---:|---:|---:|---|---|---:|---:|---|---|")


def format_row(r: dict) -> str:
    sec = lambda v: f"{v:.1f}" if isinstance(v, float) else "-"  # noqa: E731
    return (f"| {r['list']} | {r['model']} | {r.get('input', '-')} | {(r.get('macs0') or 0) / 1e6:.1f} | "
            f"{_share(r.get('macs0'), r.get('macs1'))} | {sec(r.get('sec'))} | {r.get('status', '-')} | "
            f"{'yes' if r.get('counts') else 'no'} | {_share(r.get('macs0'), r.get('tp_macs'))} | "
            f"{sec(r.get('tp_sec'))} | {r.get('tp_status', '-')} | {'yes' if r.get('tp_counts') else 'no'} |")


def names_of(kind: str, args) -> list[str]:
    if kind == "tv":
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        return [n for n in names if not any(n.startswith(k) and v > args.max_params for k, v in _TV_BIG.items())]
    return {"timm": TIMM, "hf": HF, "video": VIDEO, "seg": SEG}[kind]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lists", default="tv,timm,hf,video,seg", help="comma-separated: tv, timm, hf, video, seg")
    p.add_argument("--models", default="", help="only these names (comma-separated)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--min-channels", type=int, default=8, help="ours only (Torch-Pruning has no such floor)")
    p.add_argument("--torch-pruning", action="store_true", help="also run Torch-Pruning at the same settings")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed per pruner per model")
    p.add_argument("--max-params", type=float, default=150e6, help="skip torchvision models larger than this")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a busy machine)")
    p.add_argument("--out", default="", help="append the table rows to this file as they finish")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = {n for n in args.models.split(",") if n}
    print(HEADER, flush=True)
    totals: dict[str, list[int]] = {}
    for kind in [k for k in args.lists.split(",") if k]:
        for name in names_of(kind, args):
            if only and name not in only:
                continue
            try:
                row = sweep_one(kind, name, args)
            except Exception as exc:  # the dense model itself failed to build or export
                row = {"list": kind, "model": name, "status": f"FAIL (dense) {type(exc).__name__}: {str(exc)[:100]}"}
            line = format_row(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
            t = totals.setdefault(kind, [0, 0, 0])
            t[0] += 1
            t[1] += bool(row.get("counts"))
            t[2] += bool(row.get("tp_counts"))
    for kind, (n, ours, theirs) in totals.items():
        print(f"{kind}: slimc {ours}/{n}" + (f", Torch-Pruning {theirs}/{n}" if args.torch_pruning else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
