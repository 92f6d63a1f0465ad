"""Per-layer timers for each backend, all with the same small interface.

    timer.profiled(inputs, n)   n runs with the runtime's own profiler on
    timer.plain(inputs, n)      n runs of the unprofiled artifact, wall time in ms each
    timer.runs()                per profiled run, {layer name: (op type, ms)}

ONNX Runtime: a second session with `SessionOptions.enable_profiling` (its JSON trace holds one
`Node` event per kernel run). OpenVINO: a second compiled model with `PERF_COUNT`, read through
`InferRequest.get_profiling_info()` after each run. The artifact the user gets is never touched,
so profiling costs nothing when not asked for. TensorRT needs a GPU and has no timer here yet.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
import time

import numpy as np

from ..backend.base import CannotRunHere
from ..errors import SlimcError

__all__ = ["timer_for", "OrtTimer", "OpenVinoTimer"]

def _timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


class OrtTimer:
    """ONNX Runtime: a profiling session and a plain twin, both with the artifact's options.

    Both twins run with worker-thread spinning off. Spinning workers keep their cores busy between
    runs; on a machine shared with other processes that made plain runs of resnet50 several times
    slower than their kernels (290 ms median with spinning, 138 ms without, kernels ~40 ms), which
    would compare the profile against contention rather than against the model. The artifact
    itself keeps ONNX Runtime's defaults.
    """

    def __init__(self, artifact):
        import onnxruntime as ort

        from ..ir.onnx_io import fits_protobuf, save_onnx
        from ..ir.ort_session import OPTIMIZATION_LEVELS

        self.artifact = artifact
        opts = artifact.options.as_dict()  # threads, optimization, providers
        self._dir = tempfile.mkdtemp(prefix="slimc-profile-")
        source = artifact.model.SerializeToString() if fits_protobuf(artifact.model) else \
            str(save_onnx(artifact.model, os.path.join(self._dir, "model.onnx"), external_data=True))

        def session(profiling: bool):
            so = ort.SessionOptions()
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[opts["optimization"]])
            if opts.get("threads"):
                so.intra_op_num_threads = int(opts["threads"])
            so.log_severity_level = 3
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if profiling:
                so.enable_profiling = True
                so.profile_file_prefix = os.path.join(self._dir, "ort")
            return ort.InferenceSession(source, so, providers=list(opts["providers"]))

        self.session, self.twin = session(True), session(False)
        self.names = [i.name for i in self.session.get_inputs()]
        self.details = {"spinning": "off in the profiled and the plain session"}

    def profiled(self, inputs, n: int) -> None:
        feed = dict(zip(self.names, inputs))
        for _ in range(n):
            self.session.run(None, feed)

    def plain(self, inputs, n: int) -> list[float]:
        feed = dict(zip(self.names, inputs))
        return _timed(lambda: self.twin.run(None, feed), n)

    def runs(self, skip_runs: int = 0) -> list[dict]:
        """Per profiled run, {node: (op type, kernel ms)}; the first `skip_runs` runs dropped."""
        path = self.session.end_profiling()
        try:
            with open(path) as f:
                events = json.load(f)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                         if e.get("cat") == "Session" and e.get("name") == "model_run")
        starts = [w[0] for w in windows]
        runs: list[dict] = [{} for _ in windows]
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            i = bisect.bisect_right(starts, e["ts"]) - 1
            if i < 0:
                continue
            name = e["name"][: -len("_kernel_time")]
            op = e.get("args", {}).get("op_name", "")
            prev = runs[i].get(name, (op, 0.0))[1]
            runs[i][name] = (op, prev + e["dur"] / 1e3)
        return runs[skip_runs:]


class OpenVinoTimer:
    """OpenVINO: the artifact for plain runs, the same ov.Model compiled again with PERF_COUNT on."""

    def __init__(self, artifact):
        import openvino.properties as props

        self.artifact = artifact
        config = {**artifact.config, props.enable_profiling: True}
        self.compiled = artifact.core.compile_model(artifact.model, artifact.options.device, config)
        self.request = self.compiled.create_infer_request()
        self._runs: list[list] = []
        self.details = {}

    def profiled(self, inputs, n: int) -> None:
        feed = {i: np.ascontiguousarray(a) for i, a in enumerate(inputs)}
        for _ in range(n):
            self.request.infer(feed, share_inputs=True)
            # Counters describe the last inference only; read them after each run.
            self._runs.append([(p.node_name, p.node_type, p.real_time.total_seconds() * 1e3, p.status.name)
                               for p in self.request.get_profiling_info()])

    def plain(self, inputs, n: int) -> list[float]:
        return _timed(lambda: self.artifact.run(inputs), n)

    def runs(self, skip_runs: int = 0) -> list[dict]:
        """Per profiled run, {layer: (op type, ms)} for the layers that executed."""
        out = []
        for run in self._runs[skip_runs:]:
            # NOT_RUN: fused into another layer, or a constant
            out.append({name: (op, ms) for name, op, ms, status in run if status == "EXECUTED"})
        return out


def timer_for(artifact):
    """The per-layer timer for a built artifact, or a clear error for a backend without one."""
    backend = getattr(artifact, "backend", "")
    if backend == "onnxruntime":
        return OrtTimer(artifact)
    if backend == "openvino":
        return OpenVinoTimer(artifact)
    if backend == "tensorrt":
        from ..backend.tensorrt.runner import require_gpu

        require_gpu("profile a TensorRT engine layer by layer")  # raises CannotRunHere without a GPU
        # gpu: untested here (no GPU on the development machines), so not claimed.
        raise CannotRunHere("per-layer profiling of TensorRT engines is not implemented in slimc yet; "
                            "run 'trtexec --loadEngine=model.engine --dumpProfile --separateProfileRun' "
                            "on the saved engine, or profile with --backend onnxruntime/openvino.")
    raise SlimcError(f"slimc cannot profile the '{backend}' backend layer by layer; "
                     "use --backend onnxruntime or openvino.")
