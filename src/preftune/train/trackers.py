"""Where logged metrics go besides ``metrics.jsonl`` (``--report_to``): TensorBoard (the default), MLflow,
trackio and Weights & Biases, each through its own library, with the same metric names and steps.

Each tracker is configured the way its users already configure it: MLflow by ``MLFLOW_TRACKING_URI``
(MLflow's own default when unset) and ``MLFLOW_EXPERIMENT_NAME`` (default ``preftune``); trackio by
``TRACKIO_PROJECT`` (default ``preftune``) and its own local store; W&B by ``WANDB_PROJECT`` (default
``preftune``), ``WANDB_MODE`` (``offline`` works without a network) and its other variables. The libraries
are optional extras (``pip install 'preftune[mlflow]'`` …); the config refuses one that is not installed.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

def scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics record (what every tracker can plot)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flat_config(cfg) -> dict:
    """The run's options as tracker parameters (lists and dicts as their text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in vars(cfg).items()}


class TensorBoard:
    def __init__(self, run_path: Path, cfg):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_path / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, run_path: Path, cfg):
        import mlflow
        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "preftune"))
        self.run = mlflow.start_run(run_name=run_path.name)
        mlflow.log_params(flat_config(cfg))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class Trackio:
    def __init__(self, run_path: Path, cfg):
        import trackio
        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "preftune"), name=run_path.name,
                     config=flat_config(cfg))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


class WandB:
    def __init__(self, run_path: Path, cfg):
        import wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "preftune"), name=run_path.name,
                              dir=str(run_path), config=flat_config(cfg))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKER_CLASSES = {"tensorboard": TensorBoard, "mlflow": MLflow, "trackio": Trackio, "wandb": WandB}


def open_trackers(names: list[str], run_path: Path, cfg) -> list:
    return [TRACKER_CLASSES[name](run_path, cfg) for name in names if name != "none"]
