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
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..errors import SlimcError

__all__ = ["TrialStore", "rebuild_trials", "utc_now", "STATUSES"]

STATUSES = ("ok", "infeasible", "failed")
_META_LIMIT = 16 << 20  # search.json / baseline.json are small; a bigger one is not ours


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TrialStore:
    """A run folder with one writer at a time.

    `open` takes an exclusive lock (`.lock` in the folder, holding the writer's pid and host) for as
    long as the store is open, so a second search on the same folder stops with an error naming the
    first instead of both writing the same trial ids. Appends are atomic per line (one write + fsync)
    and thread-safe. Reading validates every line and names the first bad one; the only repair is
    cutting a torn last line (a write cut short: no newline at its end).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.trials_path = self.folder / "trials.jsonl"
        self.meta_path = self.folder / "search.json"
        self.baseline_path = self.folder / "baseline.json"
        self.lock_path = self.folder / ".lock"
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._lock_file = None

    # -- life cycle ---------------------------------------------------------------------------
    def open(self, meta: dict, resume: bool) -> list[dict]:
        """Lock the folder (creating it), check it suits `meta` and `resume`; return the stored records."""
        if resume and not (self.trials_path.is_file() or self.meta_path.is_file()):
            raise SlimcError(f"--resume: '{self.folder}' holds no search (no trials.jsonl or search.json there). "
                             "Check the --store path, or drop --resume to start a new search in it.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SlimcError(f"cannot create the store folder '{self.folder}': {exc.strerror}.") from None
        self._acquire()
        try:
            has_trials = self.trials_path.is_file() and self.trials_path.stat().st_size > 0
            if has_trials and not resume:
                raise SlimcError(f"'{self.folder}' already holds trials ({self.trials_path}). "
                                 "Add --resume to continue that search, or choose another --store folder.")
            old = self.load_meta() if resume else None
            for key in ("pipeline", "dimensions"):
                if old is not None and old.get(key) != meta.get(key):
                    raise SlimcError(
                        f"--resume: the store '{self.folder}' was made for another search ({key} differs: "
                        f"{_short(old.get(key))} there, {_short(meta.get(key))} now). Use the same pipeline "
                        "and model, or another --store folder.")
            records = self.records(repair=True) if resume else []
            self._write_json(self.meta_path, meta)
        except BaseException:
            self.close()
            raise
        return records

    def close(self) -> None:
        """Release the writer's lock (also released when the process ends)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _acquire(self) -> None:
        import fcntl

        fh = open(self.lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read(200).strip() or "another process"
            fh.close()
            raise SlimcError(f"the store '{self.folder}' is in use by another search ({holder}); one search writes "
                             "a store at a time. Wait for it to finish, or choose another --store folder.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {utc_now()}\n")
        fh.flush()
        self._lock_file = fh

    # -- records ------------------------------------------------------------------------------
    def records(self, repair: bool = False) -> list[dict]:
        """Stored records in file order, each checked; a bad line is an error naming it.

        A torn last line (no newline at its end, not a whole record) is skipped, and cut from the file
        when `repair` (only the store's writer repairs).
        """
        if not self.trials_path.is_file():
            return []
        data = self.trials_path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        out, seen = [], {}
        for n, raw in enumerate(lines, start=1):
            if raw.strip():
                _keep(out, seen, _parse_record(raw, self.trials_path, n), self.trials_path, n)
        if tail.strip():
            try:
                rec = _parse_record(tail, self.trials_path, len(lines) + 1)
            except SlimcError:
                rec = None
            if rec is not None:  # whole, only its newline is missing
                _keep(out, seen, rec, self.trials_path, len(lines) + 1)
            if repair:
                self._repair_tail()
                if rec is None:
                    self.notes.append(f"cut a torn last line ({len(tail)} bytes, a write cut short) from "
                                      f"{self.trials_path}")
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
        """End the file with a newline: a whole last record gets one, a torn one is cut."""
        if not self.trials_path.is_file() or self.trials_path.stat().st_size == 0:
            return
        with open(self.trials_path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            start = data.rfind(b"\n") + 1
            try:
                _parse_record(data[start:], self.trials_path, 0)
                fh.write(b"\n")
            except SlimcError:
                fh.truncate(start)

    # -- side files ---------------------------------------------------------------------------
    def load_meta(self) -> dict | None:
        return self._read_json(self.meta_path)

    def load_baseline(self) -> dict | None:
        return self._read_json(self.baseline_path)

    def save_baseline(self, baseline: dict) -> None:
        self._write_json(self.baseline_path, baseline)

    def _read_json(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        from ..ir.files import read_text_bounded

        try:
            data = json.loads(read_text_bounded(path, "store file", _META_LIMIT))
        except ValueError as exc:
            raise SlimcError(f"'{path}' is not valid JSON ({exc}); the store is damaged. Restore the file, or "
                             "start the search afresh in another --store folder.") from None
        if not isinstance(data, dict):
            raise SlimcError(f"'{path}' holds a JSON {type(data).__name__}, not an object; the store is damaged. "
                             "Restore the file, or start afresh in another --store folder.")
        return data

    def _write_json(self, path: Path, data) -> None:
        from ..ir.onnx_io import atomic_write

        text = json.dumps(data, indent=2, default=_jsonable)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _parse_record(raw: bytes, path: Path, n: int) -> dict:
    """One line of trials.jsonl as a checked record; SlimcError naming the line otherwise."""
    where = f"{path}, line {n}"
    try:
        rec = json.loads(raw)
    except ValueError as exc:
        raise SlimcError(f"{where}: not JSON ({exc}); the store is damaged. Remove or fix that line to resume.") \
            from None
    problem = None
    if not isinstance(rec, dict):
        problem = f"a JSON {type(rec).__name__}, not a trial record"
    elif not isinstance(rec.get("id"), int) or isinstance(rec.get("id"), bool) or rec["id"] < 0:
        problem = f"'id' is {rec.get('id')!r}, not a trial number"
    elif rec.get("status") not in STATUSES:
        problem = f"'status' is {rec.get('status')!r}, not one of {', '.join(STATUSES)}"
    elif rec.get("loss") is not None and (not isinstance(rec["loss"], (int, float)) or isinstance(rec["loss"], bool)):
        problem = f"'loss' is {rec['loss']!r}, not a number"
    elif not isinstance(rec.get("vals", {}), dict):
        problem = f"'vals' is {rec['vals']!r}, not an object"
    elif rec.get("metrics") is not None and not isinstance(rec["metrics"], dict):
        problem = f"'metrics' is {rec['metrics']!r}, not an object"
    if problem:
        raise SlimcError(f"{where}: {problem}; the store is damaged. Remove or fix that line to resume.")
    return rec


def _keep(out: list, seen: dict, rec: dict, path: Path, n: int) -> None:
    """Add a record; the same record twice (a flush raced a crash) counts once, a different one is an error."""
    first = seen.get(rec["id"])
    if first is None:
        seen[rec["id"]] = (rec, n)
        out.append(rec)
    elif first[0] != rec:
        raise SlimcError(f"{path}, line {n}: trial id {rec['id']} was already used on line {first[1]} by another "
                         "trial (two searches wrote this store); the store is damaged. Remove the duplicate lines "
                         "to resume.")


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
