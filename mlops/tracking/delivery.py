"""The tracker that never blocks training: MLflow calls on a bounded queue, delivered by a background thread
that retries while the server is away, flushed with a bound at the end, the rest written to a file
(docs/tracking.md)."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from mlops.tracking.store import tracking_uri

UNDELIVERED = "tracking_undelivered.jsonl"
# MLflow's log_batch limits; a larger call is split on the queue
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
WARN_EVERY_S = 30.0


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer for the bounded time a call that must arrive (the model) waits."""


def transient(err: BaseException) -> bool:
    """A failure worth retrying: no connection, a timeout, a server error (5xx), throttling. Anything else
    (a 4xx answer: a changed param, a deleted run; a missing file) is not."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(err, RestException):
        code = err.get_http_status_code()
        return code >= 500 or code in (408, 429)
    if isinstance(err, MlflowException):
        status = re.search(r"error code (\d{3})", str(err))  # a non-JSON answer, e.g. 403 from an auth proxy
        if status:
            code = int(status.group(1))
            return code >= 500 or code in (408, 429)
        return "API request to" in str(err)  # how MLflow's REST client wraps connection errors and timeouts
    try:
        import requests

        if isinstance(err, requests.HTTPError):
            return err.response is None or err.response.status_code >= 500 or err.response.status_code == 429
        if isinstance(err, (requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:
        pass
    return isinstance(err, (ConnectionError, TimeoutError))


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _warn(message: str) -> None:
    print(f"MLflow tracking: {message}", file=sys.stderr, flush=True)


@contextmanager
def short_http_attempts():
    """One MLflow HTTP call = one short attempt (the callers here retry with backoff themselves): MLflow's own
    defaults retry 7 times over minutes and wait 120 s for an answer. Process-wide while the stage runs."""
    values = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("TRANSPOSE_TRACKING_HTTP_RETRIES", "0"),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("TRANSPOSE_TRACKING_HTTP_TIMEOUT_S", "10"),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def retry(call, what: str, seconds: float, first_wait: float = 0.5, max_wait: float = 10.0):
    """`call()` until it succeeds, retrying transient failures with backoff for at most `seconds`; then (or on
    a failure that is not transient) its exception."""
    deadline, wait, warned = time.monotonic() + seconds, first_wait, 0.0
    while True:
        try:
            return call()
        except Exception as err:
            left = deadline - time.monotonic()
            if not transient(err) or left <= 0:
                raise
            if time.monotonic() - warned >= WARN_EVERY_S:
                _warn(f"{what} failed ({_short(err)}); retrying for up to {left:.0f} s more")
                warned = time.monotonic()
            time.sleep(min(wait, left))
            wait = min(wait * 2, max_wait)


class MlflowTracker:
    """The trainer's tracker over one MLflow run. The log calls return at once: a background thread delivers
    them in order (see the module docstring); `close()` flushes with a bounded wait and never raises."""

    def __init__(
        self,
        mlflow,
        run_id: str | None = None,
        out_dir: str | Path | None = None,
        *,
        client=None,
        parent_run_id: str | None = None,
        known_params: dict[str, str] | None = None,
        queue_max: int | None = None,
        system_metrics: bool = False,
        system_step: int = 0,
        owns_active_runs: bool = False,
    ):
        self.mlflow = mlflow
        self.run_id = run_id or mlflow.active_run().info.run_id
        self.client = client or mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri())
        self.tracking_uri = str(self.client.tracking_uri)
        self.parent_run_id = parent_run_id
        self.out_dir = Path(out_dir) if out_dir else None
        self.queue_max = max(1, queue_max or int(os.environ.get("TRANSPOSE_TRACKING_QUEUE", "10000")))
        self.backoff = (
            _seconds("TRANSPOSE_TRACKING_RETRY_MIN_S", 0.5),
            _seconds("TRANSPOSE_TRACKING_RETRY_MAX_S", 10.0),
        )
        self._owns_active_runs = owns_active_runs
        self._known_params = dict(known_params or {})
        self._queue: deque[dict] = deque()
        self._inflight: list[dict] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()  # the worker leaves (close's wait is over)
        self._wake = threading.Event()  # cuts a retry's backoff short (close, or the worker leaving)
        self._closed = False
        self.delivered = self.failed_attempts = self.dropped = 0
        self.outage_s = 0.0
        self._outage_since: float | None = None
        self._warned_at = self._dropped_warned_at = -1e9
        self._undelivered: list[dict] = []  # given up on (not transient) or left at close
        self._worker = threading.Thread(target=self._drain, name="mlflow-tracking", daemon=True)
        self._worker.start()
        self._sampler, self._sampler_stop = None, threading.Event()
        if system_metrics:
            self._sampler = threading.Thread(target=self._sample_system, args=(system_step,), daemon=True)
            self._sampler.start()

    # ---- the Tracker protocol: queued, never blocking --------------------------------------------------------
    def log_params(self, params: dict) -> None:
        flat = {str(k): str(v)[:500] for k, v in params.items()}
        new = {}
        for key, value in flat.items():
            if key not in self._known_params:
                self._known_params[key] = new[key] = value
            elif self._known_params[key] != value:  # MLflow keeps a param's first value (a resumed run)
                self._give_up(
                    {"call": "log_params", "data": {key: value}},
                    f"the run already has {key}={self._known_params[key]!r} (MLflow keeps a param's first value)",
                )
        keys = list(new)
        for i in range(0, len(keys), MAX_PARAMS):
            self._put({"call": "log_params", "data": {k: new[k] for k in keys[i : i + MAX_PARAMS]}})

    def log_metrics(self, metrics: dict, step: int) -> None:
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        stamp, keys = int(time.time() * 1000), list(clean)
        for i in range(0, len(keys), MAX_METRICS):
            part = {k: clean[k] for k in keys[i : i + MAX_METRICS]}
            self._put({"call": "log_metrics", "data": part, "step": int(step), "timestamp": stamp})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put({"call": "log_artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def set_tags(self, tags: dict) -> None:
        keys = list(tags)
        for i in range(0, len(keys), MAX_TAGS):
            self._put({"call": "set_tags", "data": {k: str(tags[k])[:5000] for k in keys[i : i + MAX_TAGS]}})

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._inflight)

    def _put(self, item: dict) -> None:
        with self._lock:
            if self._closed:
                self._give_up(item, "logged after the stage's tracking was closed")
                return
            if len(self._queue) >= self.queue_max:
                self._drop_oldest_metrics()
            self._queue.append(item)
            self._lock.notify_all()

    def _drop_oldest_metrics(self) -> None:
        oldest = next((item for item in self._queue if item["call"] == "log_metrics"), None)
        if oldest is None:
            return  # only params, tags and artifacts wait: few, kept
        self._queue.remove(oldest)
        self.dropped += 1
        self._spill([{**oldest, "reason": "dropped: the queue was full"}])
        if time.monotonic() - self._dropped_warned_at >= WARN_EVERY_S:
            self._dropped_warned_at = time.monotonic()
            _warn(
                f"the queue is full ({self.queue_max} calls waiting): dropped the oldest log_metrics call "
                f"(step {oldest['step']}), {self.dropped} dropped so far"
                + (f", written to {self.out_dir / UNDELIVERED}" if self.out_dir else "")
            )

    # ---- delivery ------------------------------------------------------------------------------------------
    def _take_batch(self) -> list[dict]:
        """The queue's head, with the calls of the same kind after it that fit in one log_batch."""
        first = self._queue.popleft()
        batch = [first]
        if first["call"] == "log_artifact":
            return batch
        limit = {"log_metrics": MAX_METRICS, "log_params": MAX_PARAMS, "set_tags": MAX_TAGS}[first["call"]]
        size = len(first["data"])
        while self._queue and self._queue[0]["call"] == first["call"]:
            if size + len(self._queue[0]["data"]) > limit:
                break
            size += len(self._queue[0]["data"])
            batch.append(self._queue.popleft())
        return batch

    def _send(self, batch: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        call = batch[0]["call"]
        if call == "log_artifact":
            self.client.log_artifact(self.run_id, batch[0]["path"], artifact_path=batch[0]["artifact_path"])
        elif call == "log_metrics":
            metrics = [Metric(k, v, item["timestamp"], item["step"]) for item in batch for k, v in item["data"].items()]
            self.client.log_batch(self.run_id, metrics=metrics)
        elif call == "log_params":
            self.client.log_batch(self.run_id, params=[Param(k, v) for item in batch for k, v in item["data"].items()])
        elif call == "set_tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for item in batch for k, v in item["data"].items()])

    def _drain(self) -> None:
        wait = self.backoff[0]
        while not self._stop.is_set():
            with self._lock:
                while not self._inflight and not self._queue and not self._stop.is_set():
                    self._lock.wait(0.5)
                if self._stop.is_set():
                    return
                if not self._inflight:
                    self._inflight = self._take_batch()
                batch = self._inflight
            try:
                self._send(batch)
            except Exception as err:
                if not transient(err):
                    with self._lock:
                        self._inflight = []
                        self._give_up(batch, f"not accepted: {_short(err, 300)}", warn=True)
                        self._lock.notify_all()
                    continue
                self.failed_attempts += 1
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                if now - self._warned_at >= WARN_EVERY_S:
                    self._warned_at = now
                    _warn(
                        f"{batch[0]['call']} to {self.tracking_uri} failed ({_short(err)}); {self.waiting} calls "
                        f"waiting; retrying every {wait:.1f}-{self.backoff[1]:.0f} s (training goes on)"
                    )
                if self._wake.wait(wait):  # one early retry, then the backoff again
                    self._wake.clear()
                wait = min(wait * 2, self.backoff[1])
                continue
            with self._lock:
                self.delivered += len(batch)
                self._inflight = []
                self._lock.notify_all()
            if self._outage_since is not None:
                lasted = time.monotonic() - self._outage_since
                self.outage_s += lasted
                self._outage_since = None
                self._warned_at = -1e9
                _warn(f"{self.tracking_uri} answers again after {lasted:.0f} s; {self.waiting} calls waiting")
            wait = self.backoff[0]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` seconds; None: TRANSPOSE_TRACKING_FLUSH_S) until every queued call is
        delivered or given up on; True when nothing waits."""
        timeout = _seconds("TRANSPOSE_TRACKING_FLUSH_S", 120.0) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._queue or self._inflight) and self._worker.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.5))
            return not (self._queue or self._inflight)

    # ---- the end of the stage -------------------------------------------------------------------------------
    def close(self, status: str = "FINISHED", timeout: float | None = None) -> dict:
        """Flush (bounded), mark the run (and the parent) `status`, write what was not delivered to
        `out_dir/tracking_undelivered.jsonl`, print a summary. Never raises for tracking (a second Ctrl-C while
        it waits only cuts the wait short and is raised at the end)."""
        timeout = _seconds("TRANSPOSE_TRACKING_FLUSH_S", 120.0) if timeout is None else timeout
        started, interrupted = time.monotonic(), None
        deadline = started + timeout
        reserve = min(10.0, timeout / 4)  # of the wait, kept for marking the runs' status
        self._sampler_stop.set()
        self._wake.set()  # retry at once: the server may be back
        try:
            if not self.flush(min(timeout - reserve, 2.0)):  # quiet when the server is there
                _warn(f"flushing {self.waiting} calls (at most {timeout:g} s in all, TRANSPOSE_TRACKING_FLUSH_S)")
                self.flush(max(0.0, deadline - reserve - time.monotonic()))
        except KeyboardInterrupt as err:
            interrupted = err
        with self._lock:
            self._closed = True
            self._stop.set()
            self._wake.set()
            self._lock.notify_all()
        self._worker.join(timeout=1.0)  # a call still under way may yet arrive: then it is also in the file
        with self._lock:
            left = self._inflight + list(self._queue)
            self._inflight, self._queue = [], deque()
        for item in left:
            self._give_up(item, "not delivered before the flush wait ended")
        if self._outage_since is not None:
            self.outage_s += time.monotonic() - self._outage_since
            self._outage_since = None
        try:  # one attempt at least, even after a Ctrl-C
            self._terminate(status, 0 if interrupted else max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt as err:
            interrupted = interrupted or err
        report = {
            "run_id": self.run_id,
            "status": status,
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "outage_s": round(self.outage_s, 1),
            "dropped": self.dropped,
            "undelivered": len(self._undelivered),
            "flush_s": round(time.monotonic() - started, 2),
        }
        self._spill(self._undelivered)
        self._undelivered = []
        summary = (
            f"run {self.run_id} {status}: {report['delivered']} calls delivered, {report['failed_attempts']} failed "
            f"attempts over {report['outage_s']:.0f} s without the server, {report['dropped']} metrics calls "
            f"dropped (queue full), {report['undelivered']} not delivered; closed in {report['flush_s']:.1f} s"
        )
        if report["undelivered"] or report["dropped"]:
            where = self.out_dir / UNDELIVERED if self.out_dir else "nowhere (the stage has no out_dir)"
            summary += f"; what was not delivered is in {where} (mlops.tracking.replay_undelivered sends it)"
        _warn(summary)
        if interrupted is not None:
            raise interrupted
        return report

    def _terminate(self, status: str, seconds: float) -> None:
        """The run's status, then the parent's, retried for at most `seconds` in all; the fluent runs (the
        stage's and the parent's, when stage_run opened them) are ended."""
        deadline = time.monotonic() + seconds
        for run_id in (self.run_id, self.parent_run_id):
            if run_id is None:
                continue
            active = self.mlflow.active_run() if self._owns_active_runs else None
            if active is not None and active.info.run_id == run_id:
                try:
                    self.mlflow.end_run(status)  # pops the fluent run, then one attempt at the status
                    continue
                except Exception as err:
                    if not transient(err):
                        self._give_up({"call": "set_terminated", "run": run_id, "status": status}, _short(err, 300))
                        continue
            try:
                left = max(0.0, deadline - time.monotonic())
                retry(lambda r=run_id: self.client.set_terminated(r, status), f"marking run {run_id} {status}", left)
            except Exception as err:
                self._give_up({"call": "set_terminated", "run": run_id, "status": status}, _short(err, 300))

    def _give_up(self, item: dict | list[dict], reason: str, warn: bool = False) -> None:
        items = item if isinstance(item, list) else [item]
        self._undelivered.extend({**i, "reason": reason} for i in items)
        if warn:
            _warn(f"gave up on {items[0]['call']} ({len(items)} calls): {reason}")

    def _spill(self, items: list[dict]) -> None:
        if not items or self.out_dir is None:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / UNDELIVERED, "a") as out:
                for item in items:
                    out.write(json.dumps({"run_id": self.run_id, "tracking_uri": self.tracking_uri, **item}) + "\n")
        except OSError as err:
            _warn(f"could not write {self.out_dir / UNDELIVERED}: {err}")

    def _sample_system(self, step: int) -> None:
        """MLflow's system metrics (CPU, memory, disk, network, GPU), sampled here and sent through the queue:
        MLflow's own monitor thread stops for good at the first failed call."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, resume_logging=False)
        except Exception as err:
            _warn(f"no system metrics ({_short(err)})")
            return
        while not self._sampler_stop.wait(monitor.sampling_interval):
            try:
                monitor.collect_metrics()
                metrics = monitor.aggregate_metrics()
                for part in monitor.monitors:
                    part.clear_metrics()
            except Exception:
                continue
            self.log_metrics({f"system/{k}": v for k, v in metrics.items()}, step=step)
            step += 1

    # ---- what must arrive: the model --------------------------------------------------------------------------
    def log_model(self, log: Callable[[str], object]) -> str:
        """Log the run's model with `log(run_id)` (which returns MLflow's ModelInfo; the train stage passes
        `mlops.serving.packaging.log_serving_model`). Returns the model URI. Called once the weights are on
        disk: while the server is away it waits and retries for TRANSPOSE_TRACKING_FINAL_S seconds, then raises
        TrackingUnavailable."""
        seconds = _seconds("TRANSPOSE_TRACKING_FINAL_S", 180.0)
        deadline = time.monotonic() + seconds
        while True:
            try:
                retry(lambda: self.client.get_run(self.run_id), "reaching the server to log the model", seconds)
                info = log(self.run_id)
                return info.model_uri
            except Exception as err:
                seconds = deadline - time.monotonic()
                if not transient(err):
                    raise
                if seconds <= 0:
                    raise TrackingUnavailable(
                        f"MLflow at {self.tracking_uri} did not take the model of run {self.run_id} within "
                        f"TRANSPOSE_TRACKING_FINAL_S={_seconds('TRANSPOSE_TRACKING_FINAL_S', 180.0):.0f} s "
                        f"({_short(err)}). The weights are on disk; rerun the stage once the server is back: it "
                        "resumes the finished training and logs the model to the same run."
                    ) from err
                _warn(f"log_model failed ({_short(err)}); retrying for up to {seconds:.0f} s more")

    def write_run_info(self, path: str | Path, model_uri: str) -> Path:
        """Where this stage's run and logged model are (read by the `promote` stage to register the model)."""
        info = {"run_id": self.run_id, "model_uri": model_uri, "tracking_uri": tracking_uri()}
        Path(path).write_text(json.dumps(info, indent=1) + "\n")
        return Path(path)


def replay_undelivered(path: str | Path, tracking_uri: str | None = None) -> int:
    """Send what a stage could not deliver (its `tracking_undelivered.jsonl`) to the runs it was for; the lines
    that still fail stay in the file. Returns how many calls were delivered."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    path = Path(path)
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept, sent = [], 0
    for item in lines:
        client = MlflowClient(tracking_uri=tracking_uri or item.get("tracking_uri"))
        run, call = item.get("run") or item["run_id"], item["call"]
        try:
            if call == "log_metrics":
                metrics = [Metric(k, v, item["timestamp"], item["step"]) for k, v in item["data"].items()]
                client.log_batch(run, metrics=metrics)
            elif call == "log_params":
                client.log_batch(run, params=[Param(k, v) for k, v in item["data"].items()])
            elif call == "set_tags":
                client.log_batch(run, tags=[RunTag(k, v) for k, v in item["data"].items()])
            elif call == "log_artifact":
                client.log_artifact(run, item["path"], artifact_path=item.get("artifact_path"))
            elif call == "set_terminated":
                client.set_terminated(run, item["status"])
            sent += 1
        except Exception as err:
            kept.append({**item, "reason": f"replay failed: {_short(err, 300)}"})
    path.write_text("".join(json.dumps(item) + "\n" for item in kept))
    return sent
