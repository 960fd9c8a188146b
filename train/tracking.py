"""A training job as an MLflow run: the recipe as params, every logged step as metric history, the adapter.

The run is opened before the workers start and closed FINISHED or FAILED after, so a job that dies
halfway is still in the store with the recipe that killed it. Tracking is best effort: a store that
cannot be written costs a warning on the job's log, never the training run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_serve.config import Config
    from llm_serve.tracking import Tracker
    from train.config import TrainConfig
    from train.job import JobResult

TRAIN_KIND = "train"
ADAPTER_ARTIFACTS = "adapter"


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`{"method": {"lora": {"r": 8}}}` -> `("method.lora.r", 8)`: how MLflow's params table can show a recipe."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


class TrainingRun:
    """The MLflow side of one job; every method swallows (and reports) store errors."""

    def __init__(self, config: Config, say: Callable[[str], None]) -> None:
        self.say = say
        self.tracker: Tracker | None = None
        self.run_id: str | None = None
        self.experiment = config.tracking.training_experiment
        if not config.tracking.enabled:
            return
        try:
            from llm_serve.tracking import Tracker

            self.tracker = Tracker.from_config(config)
        except Exception as exc:  # mlflow missing (a slim install) or a store that cannot be opened
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        self.say(f"warning: MLflow tracking off for this job: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        self.tracker = None

    def start(self, cfg: TrainConfig, job_id: str, data_path: Path) -> None:
        if self.tracker is None:
            return
        try:
            from train.data import dataset_hash

            digest = dataset_hash(data_path)
        except OSError:  # preflight, next, reports the missing file properly
            digest = "unreadable"
        try:
            self.run_id = self.tracker.start_run(
                self.experiment,
                cfg.name,
                tags={"llm_serve.kind": TRAIN_KIND, "llm_serve.job_id": job_id, "llm_serve.base_model": cfg.base_model},
            )
            recipe = dict(flatten(cfg.model_dump(mode="json")))
            self.tracker.log(self.run_id, params={**recipe, "dataset_hash": digest, "job_id": job_id})
            self.say(f"mlflow: run {self.run_id} in experiment {self.experiment!r} at {self.tracker.uri}")
        except Exception as exc:
            self._warn(exc)

    def finish(self, result: JobResult, registry_root: str | None) -> None:
        if self.tracker is None or self.run_id is None:
            return
        try:
            points = self.tracker.log_series(self.run_id, result.history)
            summary = {f"final.{k}": v for k, v in result.metrics.items() if isinstance(v, int | float)}
            tags: dict[str, str] = {}
            params: dict[str, Any] = {"checkpoint": result.checkpoint_path}
            if result.adapter is not None:
                tags["llm_serve.adapter"] = result.adapter.model_id
                params |= {"adapter": result.adapter.model_id, "adapter_path": result.adapter.path}
                local = Path(result.adapter.path)
                if registry_root is not None and "://" not in registry_root and local.is_dir():
                    self.tracker.log_artifacts(self.run_id, [local], under=ADAPTER_ARTIFACTS)
            if result.model_path is not None:
                params["model_path"] = result.model_path  # a full model: its path, not gigabytes copied
            self.tracker.log(self.run_id, params=params, metrics={**summary, "elapsed_s": result.elapsed_s}, tags=tags)
            self.tracker.end(self.run_id)
            self.say(f"mlflow: logged {points} step metric point(s) and the recipe to run {self.run_id}")
        except Exception as exc:
            self._warn(exc)

    def fail(self) -> None:
        if self.tracker is None or self.run_id is None:
            return
        try:
            self.tracker.end(self.run_id, failed=True)
        except Exception as exc:
            self._warn(exc)
