"""MLflow tracking: evaluation runs, prompt versions and training jobs, in one store users open with `mlflow ui`.

Everything goes through an explicit `MlflowClient` bound to one tracking URI rather than the `mlflow`
module's process-wide state, so a test (or a library user) that points llm-serve at its own store
never moves someone else's `mlflow.set_tracking_uri`. mlflow is imported lazily: it costs ~2 s, which
`llm-serve eval --no-tracking` and the serving path should not pay.

The embedded default is a SQLite store under the llm-serve home (`sqlite:///<home>/mlflow/mlflow.db`),
with artifacts beside it; experiments are created with that artifact root because MLflow's own
default is `./mlruns` relative to whatever directory the command happened to run in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from llm_serve.config import Config, TrackingConfig
    from llm_serve.prompts.version import PromptVersion

URI_ENV = "MLFLOW_TRACKING_URI"
DB_FILE = "mlflow.db"
# MLflow's limits (mlflow/utils/validation.py): longer values are refused, not truncated, so we cut them.
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
BATCH_METRICS = 1000  # log_batch takes at most 1000 metrics per call
KIND_TAG = "llm_serve.kind"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"


class TrackingError(RuntimeError):
    """The store could not be written; callers report it and carry on (their own results are on disk)."""


def _quiet_mlflow() -> None:
    """No network from a tracking call (this machine has none) and no INFO chatter on the CLI's stderr."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow' / DB_FILE}"


def resolve_uri(tracking: TrackingConfig, home: Path, override: str | None = None) -> str:
    """An explicit URI (a flag), then the config's, then $MLFLOW_TRACKING_URI, then the home's SQLite store."""
    return override or tracking.uri or os.environ.get(URI_ENV) or default_uri(home)


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if not isinstance(value, int | float | bool) else str(value)
    return text[:MAX_PARAM_CHARS]


class Tracker:
    """One MLflow store: get-or-create experiments, runs with params/metrics/artifacts, prompt versions."""

    def __init__(self, uri: str, artifact_root: str | Path) -> None:
        _quiet_mlflow()
        from mlflow import MlflowClient

        _quiet_mlflow()  # importing mlflow configures its loggers at INFO: set them again
        self.uri = uri
        self.artifact_root = str(artifact_root)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client: MlflowClient = MlflowClient(tracking_uri=uri, registry_uri=uri)
        except Exception as exc:
            raise TrackingError(f"cannot open the MLflow store {uri}: {exc}") from exc

    @classmethod
    def from_config(cls, config: Config, uri: str | None = None) -> Tracker:
        home = config.home_path
        tracking = config.tracking
        root = tracking.artifact_root or str(home / "mlflow" / "artifacts")
        return cls(resolve_uri(tracking, home, uri), root)

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = Path(self.artifact_root) / name if "://" not in self.artifact_root else None
        try:
            return str(
                self.client.create_experiment(
                    name, artifact_location=location.as_uri() if location else f"{self.artifact_root}/{name}"
                )
            )
        except Exception:
            found = self.client.get_experiment_by_name(name)  # created concurrently by another process
            if found is None:
                raise
            return str(found.experiment_id)

    def start_run(
        self, experiment: str, name: str, *, parent: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        run_tags = {RUN_NAME_TAG: name, **(tags or {})}
        if parent is not None:
            run_tags[PARENT_TAG] = parent  # what mlflow.start_run(nested=True) sets: the UI nests on it
        run = self.client.create_run(self.experiment_id(experiment), run_name=name, tags=run_tags)
        return str(run.info.run_id)

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float | None] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        """Params, metrics (None values are left out: MLflow has no null metric) and tags in one batch."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        metric_list = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if v is not None]
        param_list = [Param(k, _param(v)) for k, v in (params or {}).items() if v is not None]
        tag_list = [RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in (tags or {}).items()]
        for start in range(0, max(len(metric_list), 1), BATCH_METRICS):
            chunk = metric_list[start : start + BATCH_METRICS]
            self.client.log_batch(
                run_id, metrics=chunk, params=param_list if start == 0 else [], tags=tag_list if start == 0 else []
            )

    def log_series(self, run_id: str, rows: Iterable[Mapping[str, Any]], step_key: str = "step") -> int:
        """One metric history per numeric key of `rows` (training's per-step losses); returns the points logged."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        points = [
            Metric(key, float(value), now, int(row[step_key]))
            for row in rows
            for key, value in row.items()
            if key != step_key and isinstance(value, int | float) and not isinstance(value, bool)
        ]
        for start in range(0, len(points), BATCH_METRICS):
            self.client.log_batch(run_id, metrics=points[start : start + BATCH_METRICS])
        return len(points)

    def log_artifacts(self, run_id: str, paths: Iterable[Path], under: str | None = None) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=under)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path=under)

    def end(self, run_id: str, failed: bool = False) -> None:
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    def register_prompt(self, prompt: PromptVersion) -> int:
        """Register one locked prompt version; returns MLflow's version number (its own 1, 2, ... sequence).

        MLflow numbers versions itself, so llm-serve's version and content hash go in as tags, and a
        version already registered with the same hash is found and returned instead of registered twice
        (locking is repeatable). Messages prompts are registered as chat prompts.
        """
        template: Any = prompt.template if prompt.template is not None else [dict(m) for m in prompt.messages or ()]
        for existing in self._prompt_versions(prompt.name):
            tags = getattr(existing, "tags", None) or {}
            if tags.get("llm_serve.version") == prompt.version and tags.get("llm_serve.hash") == prompt.content_hash:
                return int(existing.version)
        registered = self.client.register_prompt(
            name=prompt.name,
            template=template,
            commit_message=prompt.description or f"llm-serve {prompt.name}@{prompt.version}",
            tags={
                "llm_serve.version": prompt.version,
                "llm_serve.hash": prompt.content_hash,
                "llm_serve.ref": prompt.ref,
            },
            response_format=prompt.output_schema,
        )
        return int(registered.version)

    def _prompt_versions(self, name: str) -> list[Any]:
        try:
            return list(self.client.search_prompt_versions(name))
        except Exception:  # no prompt of that name yet (MLflow raises rather than returning none)
            return []
