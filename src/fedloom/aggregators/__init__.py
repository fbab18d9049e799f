"""Aggregators: how client values become one server value.

Each is an ``init / accumulate / finalize`` triple (:class:`fedloom.core.Aggregator`),
so a server folds updates in as they arrive, in O(model) memory. Pieces compose by
wrapping: ``checked(inner)`` validates before ``inner`` sees a value.
"""

from ._checked import Checked as Checked
from ._checked import InvalidUpdateError as InvalidUpdateError
from ._checked import checked as checked
from ._mean import sum as sum
from ._mean import weighted_mean as weighted_mean

__all__ = ["Checked", "InvalidUpdateError", "checked", "sum", "weighted_mean"]
