"""The Federated Core: placed values, intrinsics, computations and runtimes.

An algorithm written with these intrinsics runs unchanged on every runtime::

    from fedloom.core import CLIENTS, computation, mean

    @computation(CLIENTS, CLIENTS)
    def mean_temperature(readings, counts):
        return mean(readings, weight=counts)

    mean_temperature([20.5, 21.0, 19.8], [3, 1, 2])   # on the LocalRuntime
"""

from ._cohort import CohortFunction as CohortFunction
from ._cohort import CohortOptions as CohortOptions
from ._cohort import NotBatchable as NotBatchable
from ._cohort import Replicated as Replicated
from ._cohort import Stacked as Stacked
from ._cohort import StackedAggregator as StackedAggregator
from ._cohort import folds_stacked as folds_stacked
from ._cohort import longest_first as longest_first
from ._cohort import stack as stack
from ._cohort import tensor_versions as tensor_versions
from ._cohort import unstack as unstack
from ._computation import Computation as Computation
from ._computation import computation as computation
from ._intrinsics import aggregate as aggregate
from ._intrinsics import apply as apply
from ._intrinsics import broadcast as broadcast
from ._intrinsics import map as map
from ._intrinsics import mean as mean
from ._intrinsics import sum as sum
from ._local import LocalRuntime as LocalRuntime
from ._placements import CLIENTS as CLIENTS
from ._placements import SERVER as SERVER
from ._placements import Placement as Placement
from ._placements import PlacementError as PlacementError
from ._reduce import Mean as Mean
from ._reduce import Sum as Sum
from ._reduce import weight_value as weight_value
from ._runtime import Aggregator as Aggregator
from ._runtime import Runtime as Runtime
from ._tree import register_dataclass as register_dataclass
from ._tree import tree_flatten as tree_flatten
from ._tree import tree_leaves as tree_leaves
from ._tree import tree_map as tree_map
from ._tree import tree_unflatten as tree_unflatten
from ._values import Execution as Execution
from ._values import Placed as Placed

__all__ = [
    "CLIENTS",
    "SERVER",
    "Aggregator",
    "CohortFunction",
    "CohortOptions",
    "Computation",
    "Execution",
    "LocalRuntime",
    "Mean",
    "NotBatchable",
    "Placed",
    "Placement",
    "PlacementError",
    "Replicated",
    "Runtime",
    "Stacked",
    "StackedAggregator",
    "Sum",
    "aggregate",
    "apply",
    "broadcast",
    "computation",
    "folds_stacked",
    "longest_first",
    "map",
    "mean",
    "register_dataclass",
    "stack",
    "sum",
    "tensor_versions",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_unflatten",
    "unstack",
    "weight_value",
]
