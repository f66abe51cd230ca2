"""MLflow helpers: where the runs go, and one run's life (start, log, end with a status);
`FileRun` is the same life written to a JSON file, for main_forget.py (no tracking store).

Default store: the database backend `sqlite:///mlruns/mlflow.db` (MLflow 3 no longer
takes a plain ./mlruns folder), with artifacts under `mlruns/artifacts/`.
`--tracking_uri`, else the standard MLFLOW_TRACKING_URI, overrides it; point it at a
shared `mlflow server` to collect the runs of many machines.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

import utils
from utils import UserError

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
RETRIES = 8  # a busy sqlite file ("database is locked") is retried with back-off


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def quiet_mlflow() -> None:
    """MLflow's and alembic's INFO lines (store creation, migrations) off stderr; warnings stay."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(uri: str):
    """An MlflowClient for `uri`. A sqlite store is created (tables and migrations) under a
    file lock, so that many runs starting at once on a new store do not race to build it."""
    from mlflow import MlflowClient

    quiet_mlflow()

    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow_init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        c = MlflowClient(tracking_uri=uri)
        retry(c.search_experiments, max_results=1)  # the store builds its tables on first use
    return c


def retry(fn, *args, **kw):
    """Call an MLflow function, retrying while a shared sqlite file is locked by another run. A SIGINT
    or SIGTERM arriving during the call takes effect after it, so that no store transaction is cut
    in the middle (its lock would stay held, and the run could not be marked KILLED)."""
    for attempt in range(RETRIES):
        try:
            with utils.signals_deferred():
                return fn(*args, **kw)
        except Exception as e:  # MlflowException / OperationalError wrap the lock error
            if "locked" not in str(e).lower() or attempt == RETRIES - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def experiment_id(c, uri: str, name: str) -> str:
    """The id of experiment `name`, created on first use (artifacts beside a sqlite store)."""
    exp = retry(c.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path(uri)
    location = (db.parent / "artifacts" / name).resolve().as_uri() if db is not None else None
    try:
        return retry(c.create_experiment, name, artifact_location=location)
    except Exception:  # another process created it first
        exp = retry(c.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


class Run:
    """One MLflow run. Ends FINISHED on success, FAILED (with the reason as a tag) otherwise."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]):
        self.uri = resolve_uri(uri)
        self.client = client(self.uri)
        exp = experiment_id(self.client, self.uri, experiment)
        # tags are strings: a REST store refuses any other type
        self.run = retry(self.client.create_run, exp, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        self.id = self.run.info.run_id
        self.where = f"MLflow run {self.id} in {self.uri}"

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # the API takes at most 100 parameters per call
            retry(self.client.log_batch, self.id, params=items[i:i + 100])

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, int | float) and not math.isnan(float(v))]
        for i in range(0, len(items), 1000):
            retry(self.client.log_batch, self.id, metrics=items[i:i + 1000])

    def tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        retry(self.client.log_batch, self.id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def artifact(self, path: Path) -> None:
        retry(self.client.log_artifact, self.id, str(path))

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.tags({"failure_reason": reason})
        retry(self.client.set_terminated, self.id, status)


class FileRun:
    """A run with no tracking store (main_forget.py): Run's calls, kept in memory and written
    when the run ends to `{folder}/{id}_run.json` (status, reason, parameters, tags, artifacts,
    and every metric with its step history), so nothing MLflow would hold is lost."""

    def __init__(self, folder: Path, experiment: str, run_name: str, tags: dict[str, str]):
        import uuid

        self.id = uuid.uuid4().hex
        self.path = Path(folder) / f"{self.id}_run.json"
        self.uri = str(self.path)
        self.where = f"run {self.id}, recorded in {self.path}"
        self.record: dict[str, Any] = {"run_id": self.id, "experiment": experiment, "run_name": run_name,
                                       "status": "RUNNING", "start_time": time.time(), "params": {},
                                       "tags": {k: str(v) for k, v in tags.items()}, "metrics": {},
                                       "artifacts": []}

    def params(self, params: dict[str, Any]) -> None:
        self.record["params"].update({k: str(v) for k, v in params.items()})

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float) and not math.isnan(float(v)):
                self.record["metrics"].setdefault(k, []).append([step, float(v)])

    def tags(self, tags: dict[str, Any]) -> None:
        self.record["tags"].update({k: str(v) for k, v in tags.items()})

    def artifact(self, path: Path) -> None:
        self.record["artifacts"].append(str(Path(path).resolve()))

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.tags({"failure_reason": reason})
        self.record.update(status=status, end_time=time.time())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        utils.write_json(self.record, self.path)


# ------------------------------------------------------------------- the runs as a table
FIXED = ["run_id", "experiment", "run_name", "status", "start_time", "end_time", "failure_reason"]
# tags a user groups and audits by, as columns of their own name
AUDIT = ["command_hash", "forget_sha1", "forget_mode", "num_forget", "checkpoint", "ideal_checkpoint", "git_commit",
         "command"]


def frame(uri: str, experiment: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """Every run of the store (or of one experiment, or matching an MLflow filter) as one row:
    FIXED and AUDIT columns, then the metrics by name, the parameters as `param.NAME` and the
    polarity tags as `polarity.NAME`; `mlflow.search_runs` does the paging."""
    import mlflow

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {db}: run mlflow_forget.py first, or pass --tracking_uri")
    c = client(uri)
    exps = {e.experiment_id: e.name for e in retry(c.search_experiments)}
    if experiment is not None:
        exps = {i: n for i, n in exps.items() if n == experiment}
        if not exps:
            raise UserError(f"no experiment {experiment!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    try:
        runs = retry(mlflow.search_runs, experiment_ids=list(exps), filter_string=filter_string)
    except mlflow.exceptions.MlflowException as e:
        raise UserError(f"--filter {filter_string!r}: {e.message}") from None
    if runs.empty:
        return pd.DataFrame(columns=FIXED + AUDIT)
    tag = runs.get  # a tag column, or None when no run has that tag
    out = pd.DataFrame({
        "run_id": runs["run_id"], "experiment": runs["experiment_id"].map(exps),
        "run_name": tag("tags.mlflow.runName"), "status": runs["status"],
        "start_time": runs["start_time"].map(_iso), "end_time": runs["end_time"].map(_iso),
        "failure_reason": tag("tags.failure_reason"),
        **{k: tag(f"tags.{k}") for k in AUDIT},
    })
    # runs made before the num_forget tag: the N their parameters name
    if "params.num_indexes_to_replace" in runs:
        n = runs["params.num_indexes_to_replace"].where(runs["params.num_indexes_to_replace"] != "None")
        out["num_forget"] = out["num_forget"].fillna(n)
    metrics = runs.filter(like="metrics.", axis=1).rename(columns=lambda k: k.removeprefix("metrics."))
    params = runs.filter(like="params.", axis=1).rename(columns=lambda k: "param." + k.removeprefix("params."))
    polarity = runs.filter(like="tags.polarity.", axis=1).rename(columns=lambda k: k.removeprefix("tags."))
    return pd.concat([out, metrics[sorted(metrics)], params[sorted(params)], polarity[sorted(polarity)]], axis=1)


def _iso(t) -> str:
    return "" if pd.isna(t) else pd.Timestamp(t).tz_convert("UTC").isoformat(timespec="seconds")
