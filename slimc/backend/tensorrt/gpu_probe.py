"""Is there an NVIDIA GPU this process can run engines on? Asked without touching TensorRT.

A broken driver can abort a process inside the CUDA or TensorRT runtime, so where device nodes exist
the question goes to torch.cuda in a subprocess (and nvidia-smi); only its answer reaches this process.
Where no device node exists at all, the cheap in-process checks are enough and safe.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

__all__ = ["GpuStatus", "probe_gpu", "reset_probe"]

_FORCE_OFF = "SLIMC_TENSORRT_NO_GPU"  # set to 1 to act as if no GPU were there (tests of the CPU path)
_PROBE = r"""
import json, torch
info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "available": torch.cuda.is_available()}
if info["available"]:
    torch.zeros(1, device="cuda")  # a context really opens, not only a device count
    major, minor = torch.cuda.get_device_capability(0)
    info.update(count=torch.cuda.device_count(), name=torch.cuda.get_device_name(0), capability=f"{major}.{minor}")
print(json.dumps(info))
"""


@dataclass(frozen=True)
class GpuStatus:
    """usable: engines can run here; reason: what was found, in words (for error messages)."""

    usable: bool
    reason: str
    name: str = ""
    capability: str = ""

    def as_dict(self) -> dict:
        return {"usable": self.usable, "reason": self.reason, "name": self.name, "capability": self.capability}


_cached: GpuStatus | None = None


def reset_probe() -> None:
    """Forget the cached answer (tests, or after the environment changed)."""
    global _cached
    _cached = None


def probe_gpu(timeout_s: float = 60.0) -> GpuStatus:
    """The GPU status of this machine, asked once per process."""
    global _cached
    if _cached is None:
        _cached = _probe(timeout_s)
    return _cached


def _nvidia_smi() -> tuple[str, str]:
    """(summary, first GPU line) from nvidia-smi, or why it gave none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found", ""
    try:
        done = subprocess.run([exe, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed ({type(exc).__name__})", ""
    if done.returncode != 0:
        first = (done.stdout + done.stderr).strip().splitlines()[:1]
        return f"nvidia-smi failed: {first[0] if first else f'exit code {done.returncode}'}", ""
    line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    return (f"nvidia-smi sees {line}" if line else "nvidia-smi lists no GPU"), line


def _probe(timeout_s: float) -> GpuStatus:
    if os.environ.get(_FORCE_OFF, "").strip() not in ("", "0"):
        return GpuStatus(False, f"{_FORCE_OFF} is set")
    found = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        found.append(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    nodes = sorted(glob.glob("/dev/nvidia[0-9]*")) + (["/dev/dxg"] if os.path.exists("/dev/dxg") else [])
    if not nodes:
        # No device node: no driver can be reached, so asking torch in-process cannot crash anything.
        import torch

        avail = torch.cuda.is_available()
        cuda = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", built without CUDA")
        smi, _ = _nvidia_smi()
        return GpuStatus(False, "; ".join([f"torch.cuda.is_available() is {avail} ({cuda})", "no /dev/nvidia0",
                                           smi, *found]))
    smi, smi_line = _nvidia_smi()
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return GpuStatus(False, "; ".join([f"torch.cuda did not answer within {timeout_s:.0f} s", smi, *found]))
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return GpuStatus(False, "; ".join([f"probing torch.cuda in a subprocess failed: {tail[0]}", smi, *found]))
    try:
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return GpuStatus(False, "; ".join(["probing torch.cuda gave no answer", smi, *found]))
    if not info.get("available"):
        why = f"torch.cuda.is_available() is False (torch {info.get('torch')}" + \
              (", built without CUDA)" if not info.get("torch_cuda") else ")")
        return GpuStatus(False, "; ".join([why, f"device nodes: {', '.join(nodes)}", smi, *found]))
    return GpuStatus(True, f"{info['name']} (compute capability {info['capability']}); {smi}",
                     name=info["name"], capability=info["capability"])
