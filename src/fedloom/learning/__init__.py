"""The Federated Learning API: models, optimizers, client work and algorithms.

>>> from fedloom.learning import build_model, fed_avg, sgd
>>> model = build_model("2nn", (1, 8, 8), 10, seed=0)
>>> process = fed_avg(model, client_learning_rate=0.05, local_epochs=5, batch_size=10)
"""

from ._client_work import ClientInput as ClientInput
from ._client_work import ClientResult as ClientResult
from ._client_work import FullBatchGradient as FullBatchGradient
from ._client_work import LocalTraining as LocalTraining
from ._evaluation import evaluate as evaluate
from ._evaluation import federated_evaluate as federated_evaluate
from ._functional import AUTOCAST_DTYPES as AUTOCAST_DTYPES
from ._functional import FunctionalModel as FunctionalModel
from ._functional import build_model as build_model
from ._models import MODELS as MODELS
from ._optimizers import Optimizer as Optimizer
from ._optimizers import adam as adam
from ._optimizers import momentum as momentum
from ._optimizers import sgd as sgd
from ._process import LearningProcess as LearningProcess
from ._process import ServerOptimizer as ServerOptimizer
from ._process import ServerState as ServerState
from ._process import distribute_params as distribute_params
from ._types import OptState as OptState
from ._types import Params as Params
from ._types import tree_bytes as tree_bytes
from .fed_avg import fed_avg as fed_avg
from .fed_sgd import fed_sgd as fed_sgd

__all__ = [
    "AUTOCAST_DTYPES",
    "MODELS",
    "ClientInput",
    "ClientResult",
    "FullBatchGradient",
    "FunctionalModel",
    "LearningProcess",
    "LocalTraining",
    "OptState",
    "Optimizer",
    "Params",
    "ServerOptimizer",
    "ServerState",
    "adam",
    "build_model",
    "distribute_params",
    "evaluate",
    "fed_avg",
    "fed_sgd",
    "federated_evaluate",
    "momentum",
    "sgd",
    "tree_bytes",
]
