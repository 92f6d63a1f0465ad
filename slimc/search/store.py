"""The trial store: `runs/NAME/trials.jsonl`, one JSON object per finished trial, appended and synced
as each trial finishes, so an interrupted search loses nothing and `--resume` continues from it.

Beside it: `search.json` (what was searched: model, pipeline, space, objective, constraints),
`baseline.json` (the dense model measured in this run), and at the end best.txt, pareto.png,
summary.md (report.py).

A record::

    {"id": 3, "status": "ok" | "infeasible" | "failed", "pipeline": "fuse-bn,prune-channels{...},...",
     "options": {"prune-channels.ratio": 0.31}, "vals": {...hyperopt's internal values...},
     "metrics": {"score": 0.97, "latency_ms": 1.2, "macs": ..., "params": ...} | null,
     "violations": [...], "loss": -0.97 | null, "seconds": 4.1, "error": null | "text", "finished": "...Z"}
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..errors import SlimcError

__all__ = ["TrialStore", "rebuild_trials", "utc_now"]


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TrialStore:
    """A run folder. Appends are atomic per line (one write + fsync) and thread-safe."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.trials_path = self.folder / "trials.jsonl"
        self.meta_path = self.folder / "search.json"
        self.baseline_path = self.folder / "baseline.json"
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------
    def open(self, meta: dict, resume: bool) -> list[dict]:
        """Create the folder (or check it matches `meta` when resuming); return the stored records."""
        has_trials = self.trials_path.is_file() and self.trials_path.stat().st_size > 0
        if has_trials and not resume:
            raise SlimcError(f"'{self.folder}' already holds trials ({self.trials_path}). "
                             "Add --resume to continue that search, or choose another --store folder.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SlimcError(f"cannot create the store folder '{self.folder}': {exc.strerror}.") from None
        if resume and self.meta_path.is_file():
            old = json.loads(self.meta_path.read_text())
            for key in ("pipeline", "dimensions"):
                if old.get(key) != meta.get(key):
                    raise SlimcError(
                        f"--resume: the store '{self.folder}' was made for another search ({key} differs: "
                        f"{_short(old.get(key))} there, {_short(meta.get(key))} now). Use the same pipeline "
                        "and model, or another --store folder.")
        self._write_json(self.meta_path, meta)
        return self.records() if resume else []

    def records(self) -> list[dict]:
        """Stored records in file order; a torn last line (killed mid-write) is ignored."""
        if not self.trials_path.is_file():
            return []
        out, seen = [], set()
        lines = self.trials_path.read_text().splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):
                    break
                raise SlimcError(f"{self.trials_path}, line {n}: not JSON; the store is damaged.") from None
            if rec.get("id") in seen:  # written twice (a flush raced a crash): keep the first
                continue
            seen.add(rec.get("id"))
            out.append(rec)
        return out

    def append(self, record: dict) -> None:
        line = json.dumps(record, default=_jsonable) + "\n"
        with self._lock:
            self._repair_tail()
            with open(self.trials_path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def _repair_tail(self) -> None:
        """Cut a torn last line so the next record starts on its own line."""
        if not self.trials_path.is_file() or self.trials_path.stat().st_size == 0:
            return
        with open(self.trials_path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            fh.truncate(data.rfind(b"\n") + 1)

    # -- side files ---------------------------------------------------------------------------
    def load_meta(self) -> dict | None:
        if self.meta_path.is_file():
            return json.loads(self.meta_path.read_text())
        return None

    def load_baseline(self) -> dict | None:
        if self.baseline_path.is_file():
            return json.loads(self.baseline_path.read_text())
        return None

    def save_baseline(self, baseline: dict) -> None:
        self._write_json(self.baseline_path, baseline)

    def _write_json(self, path: Path, data) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
        os.replace(tmp, path)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def rebuild_trials(records: list[dict], trials) -> None:
    """Insert stored records into an empty Hyperopt `Trials` (or SparkTrials) as finished trials."""
    from hyperopt import STATUS_FAIL, STATUS_OK
    from hyperopt.base import JOB_STATE_DONE

    docs = []
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    for rec in records:
        tid = int(rec["id"])
        vals = rec.get("vals") or {}
        misc = {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
                "idxs": {k: [tid] for k in vals}, "vals": {k: [v] for k, v in vals.items()}}
        if rec["status"] == "failed" or rec.get("loss") is None:
            result = {"status": STATUS_FAIL}
        else:
            result = {"status": STATUS_OK, "loss": float(rec["loss"])}
        (doc,) = trials.new_trial_docs([tid], [None], [result], [misc])
        doc["state"] = JOB_STATE_DONE
        doc["book_time"] = doc["refresh_time"] = now
        docs.append(doc)
    if docs:
        trials.insert_trial_docs(docs)
        # New ids are len(_ids) onwards: cover every id up to the largest so none is reused.
        trials._ids.update(range(max(int(r["id"]) for r in records) + 1))
    trials.refresh()
