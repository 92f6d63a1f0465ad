"""Prune model zoos with `prune-channels` (and Torch-Pruning beside it) and check every result.

Lists: torchvision classifiers (`tv`, all of `torchvision.models.list_models`), timm models across families
(`timm`, random weights), five Hugging Face transformers with tiny random configs (`hf`), torchvision video
(`video`) and segmentation (`seg`) models, and torchvision detectors (`det`: their backbones are pruned, then
put back and the whole detector runs in torch on one image). slimc's side is what a user runs:
`slimc.compile(model, x, pipeline="prune-channels{ratio=.. criterion=l2 round-to=8},to-onnx",
backend="onnxruntime")`; the artifact runs on x and must give the dense output shapes, and MACs are counted on
the artifact's ONNX. The report's frontend, warning and blockers go to --facts. A model *counts* when MACs
drop to <= 0.55 of dense (at ratio 0.5) and ONNX Runtime gives the dense output shapes. With
--torch-pruning, Torch-Pruning 1.6.1 (comparison only) runs at the same settings (L2 magnitude, same ratio
and round_to, the last layer ignored -- for a detector's backbone, every layer that feeds an output --
MultiheadAttention heads given), is exported to ONNX and counted by the same counter, with the same checks.
One model at a time, each in its own process by default; rows are appended to --out as they finish.

    .venv/bin/python tools/zoo_sweep.py --lists tv,video,seg,det --torch-pruning --timeout 120 --out sweep.md
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn

from zoo_checks import onnx_check, onnx_macs, output_layers, run_detector, shape_error, shapes  # noqa: F401

TIMM = ("resnet18 resnet50d seresnext26d_32x4d resnest14d res2net50_14w_8s regnetx_002 regnety_002 efficientnet_b0 "
        "efficientnet_lite0 mobilenetv2_050 mobilenetv3_small_050 mobilenetv3_large_100 mnasnet_small ghostnet_100 "
        "hardcorenas_a fbnetc_100 tinynet_e lcnet_050 rexnet_100 densenet121 dla34 cspresnet50 ese_vovnet19b_dw "
        "hrnet_w18_small convnext_atto convnextv2_atto vit_tiny_patch16_224 deit_tiny_patch16_224 "
        "swin_tiny_patch4_window7_224 levit_128s mobilevit_xxs poolformer_s12 nf_resnet26 repvgg_a0 mixnet_s "
        "edgenext_xx_small fastvit_t8 efficientvit_b0 mobileone_s0 xcit_nano_12_p16_224").split()
HF = ["BertModel", "DistilBertForSequenceClassification", "ViTForImageClassification", "GPT2LMHeadModel",
      "LlamaForCausalLM"]
VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b"]
SEG = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
       "lraspp_mobilenet_v3_large"]
DET = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn",
       "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
       "ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
       "keypointrcnn_resnet50_fpn"]
# Video clips (T, H, W): the smallest each model accepts (MViT's positional grid is fixed at 16x224x224).
_VIDEO_CLIP = {"mvit": (16, 224, 224), "s3d": (16, 224, 224), "swin3d": (8, 64, 64)}

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
        clip = next((c for p, c in _VIDEO_CLIP.items() if name.startswith(p)), (8, 64, 64))
        return model, torch.randn(1, 3, *clip)
    if kind == "seg":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, aux_loss=False).eval()
        return FirstOutput(model, "out").eval(), torch.randn(1, 3, 64, 64)
    if kind == "det":  # the detector; sweep_one prunes its backbone
        import torchvision

        kwargs = {} if name.startswith("ssd") else {"min_size": 320, "max_size": 320}
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs).eval(), None
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

def run_slimc(model, x, args) -> tuple[nn.Module, float, dict, list[tuple], int, int]:
    """What a user runs: `slimc.compile(model, x, pipeline="prune-channels{...},to-onnx", backend="onnxruntime")`.

    Returns (pruned module, seconds in the prune pass, facts from the report, ONNX Runtime output shapes, params, MACs on
    the artifact's ONNX)."""
    import slimc

    pipeline = (f"prune-channels{{ratio={args.ratio} criterion=l2 round-to={args.round_to} "
                f"min-channels={args.min_channels}}},to-onnx")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = slimc.compile(model, (x,), pipeline=pipeline, backend="onnxruntime", fidelity_samples=0)
    compile_s = time.perf_counter() - start
    prune = next(p for p in result.report["passes"] if p["name"] == "prune-channels")
    details = prune["details"]
    facts = {"frontend": result.report["frontend"], "compile_s": round(compile_s, 2),
             "compile_macs": [result.report["before"]["macs"], result.report["after"]["macs"]],
             "warning": details.get("warning", ""), "notes": details.get("notes", []),
             "blockers": [b.get("reason", "") for b in details.get("blockers", [])][:3]}
    got = [tuple(o.shape) for o in result.artifact.run([x.numpy()])]
    params, macs = onnx_macs(result.onnx, x)
    return result.module, prune["seconds"], facts, got, params, macs


def run_tp(model, x, args, ignored=None):
    import torch_pruning as tp

    if ignored is None:
        leaves = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))]
        ignored = [leaves[-1]] if leaves else []  # the last layer: its outputs are the model's outputs
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=args.ratio, ignored_layers=ignored, round_to=args.round_to,
                                  num_heads=heads)
    pruner.step()
    return model, time.perf_counter() - start


def _disagree(onnx_macs: int, compile_macs: int) -> bool:
    """The dense ONNX count and slimc.compile's own count of the dense model differ by over 2%."""
    return bool(compile_macs) and abs(onnx_macs - compile_macs) > 0.02 * compile_macs


def _counts(macs0, macs1, status) -> bool:
    return status == "ok" and bool(macs0) and macs1 is not None and macs1 <= 0.55 * macs0


def _failure(exc) -> str:
    cause = exc
    while cause is not None and not isinstance(cause, TimeoutError):  # the alarm may fire inside an export
        cause = cause.__cause__ or cause.__context__
    exc = cause or exc
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # exporters colour their messages
    return f"FAIL {type(exc).__name__}: {text.splitlines()[0][:120] if text else ''}"


def sweep_one(kind, name, args) -> dict:
    row = {"list": kind, "model": name}
    model, x = build(kind, name)
    whole = model if kind == "det" else None  # a detector: its backbone is pruned, then it runs whole
    if whole is not None:
        model, x = model.backbone, _backbone_input(name)
    row["input"] = "x".join(str(s) for s in x.shape[2:]) if x.dim() > 2 else str(x.shape[-1])
    with torch.no_grad():
        want = shapes(model(x))
    row["params0"], row["macs0"], _ = onnx_check(model, x, want)
    users_model = model.model if isinstance(model, FirstOutput) else model  # compile takes ModelOutput/dicts
    with torch.no_grad():  # compile's artifact has every output of the user's model (BertModel: 2), not the first
        want_all = shapes(users_model(x)) if users_model is not model else want
    try:
        with _time_limit(2 * args.timeout):  # the whole compile: export, prune, ONNX export, ORT session
            pruned, row["sec"], row["facts"], got, row["params1"], row["macs1"] = run_slimc(users_model, x, args)
        err = shape_error("onnxruntime", got, want_all)
        with torch.no_grad():
            err = err or shape_error("torch", shapes(pruned(x)), want_all)
        if not err and whole is not None:
            err = run_detector(whole, pruned, name)
        row["status"] = "ok" if not err else "FAIL " + err
        if row["facts"]["warning"]:
            row["status"] += " (warned)"
        if _disagree(row["macs0"], row["facts"]["compile_macs"][0]):
            # TorchScript's graph left some layers without shapes (ShuffleNet's channel shuffle): count the
            # dense model (and Torch-Pruning's) on the dynamo exporter's graph, as slimc's artifact is.
            row["params0"], row["macs0"], _ = onnx_check(model, x, want, dynamo=True)
            row["dynamo_count"] = True
    except Exception as exc:
        row["status"] = _failure(exc)
        if args.verbose:
            traceback.print_exc()
    row["counts"] = _counts(row["macs0"], row.get("macs1"), row["status"].split(" (")[0])
    if args.torch_pruning:
        try:
            tp_model = build(kind, name)[0]
            tp_whole = tp_model if kind == "det" else None
            if tp_whole is not None:
                tp_model = tp_model.backbone
            ignored = output_layers(tp_model, x) if tp_whole is not None else None
            with _time_limit(args.timeout):
                tp_model, row["tp_sec"] = run_tp(tp_model, x, args, ignored)
            row["tp_params"], row["tp_macs"], err = onnx_check(tp_model, x, want, row.get("dynamo_count", False))
            if not err and tp_whole is not None:
                err = run_detector(tp_whole, tp_model, name)
            row["tp_status"] = "ok" if not err else "FAIL " + err
        except Exception as exc:
            row["tp_status"] = _failure(exc)[:100]
        row["tp_counts"] = _counts(row["macs0"], row.get("tp_macs"), row["tp_status"])
    return row


def _backbone_input(name: str) -> torch.Tensor:
    """The image the detector's transform hands its backbone (SSD: its fixed size; the rest: 320x320)."""
    size = 300 if name.startswith("ssd300") else 320
    return torch.randn(1, 3, size, size)


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
    return {"timm": TIMM, "hf": HF, "video": VIDEO, "seg": SEG, "det": DET}[kind]


def sweep_isolated(kind, name, args, argv) -> dict:
    """One model in a fresh process (a crash or an out-of-memory kill ends only that row), under a hard
    wall-clock limit of four times --timeout; the row comes back as JSON with the process's peak RSS."""
    import json
    import subprocess

    cmd = [sys.executable, __file__, *argv, "--lists", kind, "--models", name, "--row-json", "--no-isolate"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    start = time.perf_counter()
    try:
        out, _ = proc.communicate(timeout=4 * args.timeout + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = ""
    lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
    row = json.loads(lines[-1]) if lines else {
        "list": kind, "model": name,
        "status": f"FAIL process ended (code {proc.returncode}) after {time.perf_counter() - start:.0f} s"}
    return row


def _sweep_guarded(kind, name, args) -> dict:
    try:
        return sweep_one(kind, name, args)
    except Exception as exc:  # the dense model itself failed to build or export
        return {"list": kind, "model": name, "status": f"FAIL (dense) {type(exc).__name__}: {str(exc)[:100]}"}


def main(argv=None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lists", default="tv,timm,hf,video,seg,det",
                   help="comma-separated: tv, timm, hf, video, seg, det")
    p.add_argument("--models", default="", help="only these names (comma-separated), in this order")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--min-channels", type=int, default=8, help="ours only (Torch-Pruning has no such floor)")
    p.add_argument("--torch-pruning", action="store_true", help="also run Torch-Pruning at the same settings")
    p.add_argument("--timeout", type=int, default=300,
                   help="seconds for Torch-Pruning's pruning step; slimc.compile (export, prune, ONNX export, "
                        "ONNX Runtime session) gets twice this")
    p.add_argument("--max-params", type=float, default=float("inf"), help="skip torchvision models larger than this")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a busy machine)")
    p.add_argument("--out", default="", help="append the table rows to this file as they finish")
    p.add_argument("--facts", default="", help="append each row with slimc's report facts (frontend, warning, "
                                               "blockers, peak RSS) to this JSON-lines file")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="each model in its own process (default; --no-isolate runs them in this one)")
    p.add_argument("--row-json", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.row_json:  # the child of sweep_isolated: one model, its row as JSON on the last line
        kind, name = args.lists, args.models
        import resource

        row = _sweep_guarded(kind, name, args)
        row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)  # KiB on Linux
        print(json.dumps(row, default=str), flush=True)
        return 0
    passed = [a for a in (sys.argv[1:] if argv is None else argv)]
    passed = _without(passed, ("--lists", "--models", "--out", "--facts"))
    only = [n for n in args.models.split(",") if n]
    print(HEADER, flush=True)
    totals: dict[str, list[int]] = {}
    for kind in [k for k in args.lists.split(",") if k]:
        listed = names_of(kind, args)
        for name in [n for n in only if n in listed] if only else listed:  # in the order --models gives
            row = sweep_isolated(kind, name, args, passed) if args.isolate else _sweep_guarded(kind, name, args)
            line = format_row(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
            if args.facts:
                with open(args.facts, "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
            t = totals.setdefault(kind, [0, 0, 0])
            t[0] += 1
            t[1] += bool(row.get("counts"))
            t[2] += bool(row.get("tp_counts"))
    for kind, (n, ours, theirs) in totals.items():
        print(f"{kind}: slimc {ours}/{n}" + (f", Torch-Pruning {theirs}/{n}" if args.torch_pruning else ""))
    return 0


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv less the given options and their values (`--opt v` or `--opt=v`)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in options)):
            kept.append(a)
    return kept


if __name__ == "__main__":
    sys.exit(main())
