"""The experiment runner: a configuration in, a trained model and its record out.

Python's view of ``fedloom run examples/digits.toml --out runs/digits``::

    from fedloom.experiments import load_config, run_experiment

    run_experiment(load_config("examples/digits.toml"), out_dir="runs/digits")
"""

from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import save_checkpoint as save_checkpoint
from ._config import AlgorithmConfig as AlgorithmConfig
from ._config import ConfigError as ConfigError
from ._config import DataConfig as DataConfig
from ._config import ExperimentConfig as ExperimentConfig
from ._config import ModelConfig as ModelConfig
from ._config import config_from_dict as config_from_dict
from ._config import config_to_dict as config_to_dict
from ._config import load_config as load_config
from ._metrics_log import MetricsLog as MetricsLog
from ._plots import plot_curves as plot_curves
from ._runner import RunResult as RunResult
from ._runner import run_experiment as run_experiment
from ._sampling import client_seed as client_seed
from ._sampling import sample_cohort as sample_cohort
from ._setup import build_process as build_process
from ._setup import setup as setup

__all__ = [
    "AlgorithmConfig",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "MetricsLog",
    "ModelConfig",
    "RunResult",
    "build_process",
    "client_seed",
    "config_from_dict",
    "config_to_dict",
    "load_checkpoint",
    "load_config",
    "plot_curves",
    "run_experiment",
    "sample_cohort",
    "save_checkpoint",
    "setup",
]
