"""The buffering MLflow logger: rank 0 (and the driver) log into an existing run without ever losing data.

When MLflow cannot be reached, the logger keeps each operation in memory and in an append-only JSONL buffer file,
returns at once, and sends the queue, in order, as soon as MLflow answers again. If it never does, ``close`` raises
``TrackingUnavailableError`` and the buffer file is replayed later with ``nrd-bench replay FILE`` (``replay``).
Metric steps are never logged twice: the logger drops steps at or below the last one MLflow holds for a key, and
sending a queue or replaying a file skips the steps already present.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from PIL import Image

from nrd.errors import UnknownNameError
from pipeline.training.tracking import (
    BufferFileError,
    TrackingError,
    TrackingRejectedError,
    TrackingUnavailableError,
    is_transient,
    mlflow_call,
)

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
FILE_OPS = ("log_artifact", "log_image")  # ops whose file is copied beside the buffer when MLflow is away
RECORD_KEYS = ("seq", "tracking_uri", "run_id", "op", "payload")
PAYLOAD_KEYS = {
    "log_params": ("params",),
    "set_tags": ("tags",),
    "log_metrics": ("metrics", "step", "timestamp"),
    "log_artifact": ("path", "artifact_path"),
    "log_text": ("text", "artifact_file"),
    "log_image": ("path", "key", "step", "timestamp"),
    "set_terminated": ("status", "end_time"),
}


class RunLogger:
    """Logs into an existing MLflow run without ever losing data or repeating a metric step.

    Each call goes to MLflow at once when it is reachable. When it is not (connection refused/reset, timeout,
    HTTP 5xx, "database is locked"), the operation is queued in memory and appended to ``buffer_path`` (JSONL, one
    fsync'ed line per operation holding tracking_uri, run_id, op, payload and a sequence number; files given to
    ``log_artifact`` are copied to ``<buffer_path>.artifacts/``) and the call returns. Every later call and ``flush``
    first try to send the queue in order, at most once per ``retry_interval`` seconds while MLflow stays down. A
    buffer file left by an earlier attempt (crash) is picked up and sent first. Operations MLflow refuses for good
    raise ``TrackingRejectedError`` at once.

    A resumed attempt logs into the same run: at construction the logger reads the run's metric history, and
    ``log_metrics`` drops keys whose step is not after the last logged one; ``last_step`` tells where MLflow stands.
    ``close`` ends the run (``drain`` sends everything without ending it), or raises ``TrackingUnavailableError``
    naming the buffer file and the ``nrd-bench replay`` command when MLflow stayed unreachable for
    ``give_up_after`` seconds.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        buffer_path: str | os.PathLike,
        *,
        retry_interval: float = 2.0,
        give_up_after: float = 300.0,
    ):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.buffer_path = Path(buffer_path).absolute()
        self.retry_interval = retry_interval
        self.give_up_after = give_up_after
        with mlflow_call(tracking_uri):
            self._client = MlflowClient(tracking_uri)
        self._queue = [record for _, record in _read_buffer(self.buffer_path)] if self.buffer_path.exists() else []
        self._seq = max((record["seq"] for record in self._queue), default=0)
        self._steps: dict[str, int] = {}  # last step logged or queued, per metric key
        for record in self._queue:
            if record["op"] == "log_metrics" and record["run_id"] == run_id:
                self._steps.update(dict.fromkeys(record["payload"]["metrics"], record["payload"]["step"]))
        self._history_read = False  # whether self._steps includes MLflow's own history of the run
        self._last_try = -float("inf")
        self._last_failure: TrackingUnavailableError | None = None
        self._drain(force=True)

    @property
    def pending(self) -> int:
        """Number of operations waiting for MLflow (also in the buffer file)."""
        return len(self._queue)

    def last_step(self, key: str | None = None) -> int | None:
        """The last step logged or queued for metric ``key`` (the largest over all keys when None); None if there
        is none. It covers the run's earlier history once MLflow could be reached."""
        if key is not None:
            return self._steps.get(key)
        return max(self._steps.values(), default=None)

    def log_params(self, params: dict) -> None:
        """Log params (values stored as strings). Logging a param again with another value raises."""
        self._submit("log_params", {"params": {key: str(value) for key, value in params.items()}})

    def set_tags(self, tags: dict) -> None:
        """Set run tags (values stored as strings); a tag set again takes the new value."""
        self._submit("set_tags", {"tags": {key: str(value) for key, value in tags.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """Log metric values at ``step``. Keys already logged at this step or a later one are dropped, so an
        attempt that redoes iterations after its last checkpoint does not log them twice. Returns what was
        logged (or queued)."""
        step = int(step)
        self._drain()
        fresh = {key: float(value) for key, value in metrics.items() if step > self._steps.get(key, step - 1)}
        if fresh:
            self._steps.update(dict.fromkeys(fresh, step))
            self._submit("log_metrics", {"metrics": fresh, "step": step, "timestamp": _now_ms()})
        return fresh

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file into the run's artifacts (under the folder ``artifact_path`` when given)."""
        path = Path(local_path).absolute()
        if not path.is_file():
            raise TrackingError(f"log_artifact: {path} is not a file")
        self._submit("log_artifact", {"path": str(path), "artifact_path": artifact_path})

    def log_image(self, local_path: str | os.PathLike, key: str, step: int) -> None:
        """Log the PNG at ``local_path`` as image ``key`` at ``step`` (MLflow's image grid, one slider per key)."""
        path = Path(local_path).absolute()
        if not path.is_file():
            raise TrackingError(f"log_image: {path} is not a file")
        self._submit("log_image", {"path": str(path), "key": key, "step": int(step), "timestamp": _now_ms()})

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact ``artifact_file`` (a path inside the run's artifacts)."""
        self._submit("log_text", {"text": text, "artifact_file": artifact_file})

    def log_dict(self, dictionary: dict, artifact_file: str) -> None:
        """Store ``dictionary`` as JSON or YAML, by the extension of ``artifact_file`` (.json, .yaml, .yml)."""
        suffix = Path(artifact_file).suffix.lower()
        if suffix == ".json":
            text = json.dumps(dictionary, indent=2)
        elif suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(dictionary, sort_keys=False)
        else:
            raise TrackingError(f"log_dict: {artifact_file!r} must end in .json, .yaml or .yml")
        self.log_text(text, artifact_file)

    def flush(self) -> bool:
        """Try once, now, to send everything queued. True when MLflow has it all."""
        return self._drain(force=True)

    def close(self, status: str = "FINISHED", timeout: float | None = None) -> None:
        """Send everything and end the run with ``status`` (FINISHED, FAILED or KILLED); see ``drain``."""
        if status not in TERMINAL_STATUSES:
            raise UnknownNameError("run status", status, TERMINAL_STATUSES)
        self._submit("set_terminated", {"status": status, "end_time": _now_ms()})
        self.drain(timeout)

    def drain(self, timeout: float | None = None) -> None:
        """Send everything queued, leaving the run as it is (a training worker's logger: the driver ends the run).
        If MLflow stays unreachable for ``timeout`` seconds (default ``give_up_after``), raise
        ``TrackingUnavailableError``; the buffer file then holds everything for ``nrd-bench replay``."""
        start = time.monotonic()
        limit = self.give_up_after if timeout is None else timeout
        while not self._drain(force=True):
            waited = time.monotonic() - start
            if waited >= limit:
                raise TrackingUnavailableError(
                    f"gave up after {waited:.0f} s: {self._last_failure}. {self.pending} operation(s) of run "
                    f"{self.run_id} are kept in {self.buffer_path}; nothing is lost. When MLflow is reachable, run: "
                    f"nrd-bench replay {shlex.quote(str(self.buffer_path))}"
                )
            time.sleep(min(self.retry_interval, limit - waited))

    def _submit(self, op: str, payload: dict) -> None:
        self._seq += 1
        record = dict(zip(RECORD_KEYS, (self._seq, self.tracking_uri, self.run_id, op, payload), strict=True))
        if self._drain():  # nothing queued ahead of it: send it now
            try:
                with mlflow_call(self.tracking_uri):
                    _apply(self._client, record, self.buffer_path.parent, None, Counter())
                return
            except TrackingUnavailableError as error:
                self._last_failure, self._last_try = error, time.monotonic()
        self._buffer(record)

    def _drain(self, force: bool = False) -> bool:
        """Read the run's metric history if not yet done, then send the queue; True when nothing is left."""
        if self._history_read and not self._queue:
            return True
        if not force and time.monotonic() - self._last_try < self.retry_interval:
            return False
        self._last_try = time.monotonic()
        queued = len(self._queue)
        try:
            with mlflow_call(self.tracking_uri):
                if not self._history_read:
                    self._read_history()
                try:
                    _send(self._client, self._queue, self.buffer_path.parent, Counter())
                except TrackingRejectedError:
                    self._queue.pop(0)  # MLflow will never take it: keep it from blocking the rest
                    raise
        except TrackingUnavailableError as error:
            self._last_failure, self._last_try = error, time.monotonic()  # wait retry_interval from its end
        finally:
            if len(self._queue) != queued:
                self._rewrite_buffer()
        return self._history_read and not self._queue

    def _read_history(self) -> None:
        for key in self._client.get_run(self.run_id).data.metrics:
            steps = [metric.step for metric in self._client.get_metric_history(self.run_id, key)]
            if key in self._steps:
                steps.append(self._steps[key])
            if steps:
                self._steps[key] = max(steps)
        self._history_read = True

    def _buffer(self, record: dict) -> None:
        if record["op"] in FILE_OPS:  # the original may be a temporary file: keep a copy
            copy = _artifacts_dir(self.buffer_path) / str(record["seq"]) / Path(record["payload"]["path"]).name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(record["payload"]["path"], copy)
            record["payload"]["path"] = copy.relative_to(self.buffer_path.parent).as_posix()
        self.buffer_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.buffer_path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self._queue.append(record)

    def _rewrite_buffer(self) -> None:
        if not self._queue:
            self.buffer_path.unlink(missing_ok=True)
            shutil.rmtree(_artifacts_dir(self.buffer_path), ignore_errors=True)
            return
        temporary = self.buffer_path.with_name(self.buffer_path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in self._queue)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.buffer_path)


def replay(buffer_path: str | os.PathLike, tracking_uri: str | None = None) -> dict[str, int]:
    """Send the operations of a buffer file to MLflow, in order, into the runs they were recorded for, and delete the
    file (and its copied artifacts) once all went through. ``tracking_uri`` overrides the recorded one. Metric steps
    already present are skipped, so replaying twice logs nothing new. Returns counts per op, plus ``metric_values``
    (values logged) and ``skipped_metric_values`` (already present)."""
    path = Path(buffer_path).absolute()
    numbered = _read_buffer(path)
    uri = tracking_uri or (numbered[0][1]["tracking_uri"] if numbered else "")
    for number, record in numbered:
        if not tracking_uri and record["tracking_uri"] != uri:
            raise BufferFileError(f"{path} line {number}: tracking_uri {record['tracking_uri']!r} differs from {uri!r}")
    remaining = [record for _, record in numbered]
    counts: Counter[str] = Counter()
    if remaining:
        try:
            with mlflow_call(uri):
                _send(MlflowClient(uri), remaining, path.parent, counts)
        except TrackingError as error:
            line = numbered[len(numbered) - len(remaining)][0]
            command = "nrd-bench replay " + shlex.quote(str(path))
            if tracking_uri:
                command += " --tracking-uri " + shlex.quote(tracking_uri)
            raise type(error)(
                f"{path} line {line}: {error}. The file is kept (replaying is idempotent); "
                + ("when MLflow is reachable" if isinstance(error, TrackingUnavailableError) else "fix that line")
                + f", run: {command}"
            ) from error
    path.unlink()
    shutil.rmtree(_artifacts_dir(path), ignore_errors=True)
    return dict(counts)


def _send(client: MlflowClient, records: list[dict], base_dir: Path, counts: Counter) -> None:
    """Apply ``records`` in order, removing each from the list once MLflow has it; metric steps already in MLflow
    are skipped. Stops at the first failure, which propagates."""
    logged_steps: dict[tuple[str, str], set[int]] = {}
    while records:
        _apply(client, records[0], base_dir, logged_steps, counts)
        records.pop(0)


def _apply(client: MlflowClient, record: dict, base_dir: Path, logged_steps: dict | None, counts: Counter) -> None:
    """Send one record. ``logged_steps`` caches the steps MLflow holds per (run, key), read on demand, to skip them;
    None trusts the caller that the steps are new."""
    run_id, op, payload = record["run_id"], record["op"], record["payload"]
    try:
        if op == "log_params":
            client.log_batch(run_id, params=[Param(key, value) for key, value in payload["params"].items()])
        elif op == "set_tags":
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in payload["tags"].items()])
        elif op == "log_metrics":
            step, metrics = payload["step"], payload["metrics"]
            if logged_steps is not None:
                for key in metrics:
                    if (run_id, key) not in logged_steps:
                        history = client.get_metric_history(run_id, key)
                        logged_steps[run_id, key] = {metric.step for metric in history}
                metrics = {key: value for key, value in metrics.items() if step not in logged_steps[run_id, key]}
                for key in metrics:
                    logged_steps[run_id, key].add(step)
            if metrics:
                time_ms = payload["timestamp"]
                client.log_batch(run_id, metrics=[Metric(key, value, time_ms, step) for key, value in metrics.items()])
            counts["metric_values"] += len(metrics)
            counts["skipped_metric_values"] += len(payload["metrics"]) - len(metrics)
        elif op == "log_artifact":
            client.log_artifact(run_id, str(base_dir / payload["path"]), payload["artifact_path"])
        elif op == "log_image":
            with Image.open(base_dir / payload["path"]) as image:
                pixels = np.asarray(image.convert("RGB"))
            client.log_image(run_id, pixels, key=payload["key"], step=payload["step"], timestamp=payload["timestamp"])
        elif op == "log_text":
            client.log_text(run_id, payload["text"], payload["artifact_file"])
        else:
            client.set_terminated(run_id, payload["status"], payload["end_time"])
    except MlflowException as error:
        if is_transient(error):
            raise
        summary = json.dumps(payload)
        summary = summary if len(summary) <= 200 else summary[:200] + "..."
        raise TrackingRejectedError(f"MLflow refused {op} {summary} for run {run_id}: {error.message}") from error
    counts[op] += 1


def _read_buffer(path: Path) -> list[tuple[int, dict]]:
    """The records of a buffer file with their line numbers; ``BufferFileError`` at the first bad line."""
    if path.is_dir():
        raise BufferFileError(f"{path} is a folder; expected a tracking buffer file (JSONL) named by the error")
    if not path.is_file():
        raise BufferFileError(f"tracking buffer file {path} does not exist")
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise BufferFileError(f"{path} line {number}: not a JSON record ({error})") from None
        problem = _record_problem(record, path.parent)
        if problem:
            raise BufferFileError(f"{path} line {number}: {problem}")
        records.append((number, record))
    return records


def _record_problem(record: object, base_dir: Path) -> str | None:
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        return f"expected a JSON object with keys {', '.join(RECORD_KEYS)}"
    if record["op"] not in PAYLOAD_KEYS:
        return f"unknown op {record['op']!r}; valid: {', '.join(PAYLOAD_KEYS)}"
    needed = PAYLOAD_KEYS[record["op"]]
    if not isinstance(record["payload"], dict) or any(key not in record["payload"] for key in needed):
        return f"the payload of {record['op']} needs the keys {', '.join(needed)}"
    if record["op"] in FILE_OPS and not (base_dir / record["payload"]["path"]).is_file():
        return f"the artifact file {base_dir / record['payload']['path']} is missing"
    return None


def _artifacts_dir(buffer_path: Path) -> Path:
    return buffer_path.with_name(buffer_path.name + ".artifacts")


def _now_ms() -> int:
    return int(time.time() * 1000)
