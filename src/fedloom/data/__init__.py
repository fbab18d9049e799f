"""Client datasets for federated learning: populations, partitioners, datasets.

A population is one block of examples (:class:`Examples`, two tensors) and a
:class:`Partition` saying which rows each client owns; :class:`ClientData`
hands out a client's examples on demand.

Example:
    >>> from fedloom.data import ClientData, load_dataset
    >>> digits = load_dataset("digits", seed=0)
    >>> population = ClientData.from_dataset(digits, "shards", 10, seed=0)
    >>> len(population), population.client("3").x.shape[1:]
    (10, torch.Size([1, 8, 8]))
"""

from ._client_data import ClientData as ClientData
from ._datasets import DatasetInfo as DatasetInfo
from ._datasets import available_datasets as available_datasets
from ._datasets import load_dataset as load_dataset
from ._examples import ClientId as ClientId
from ._examples import Dataset as Dataset
from ._examples import ExampleRows as ExampleRows
from ._examples import Examples as Examples
from ._idx import DataFileError as DataFileError
from ._idx_datasets import ChecksumError as ChecksumError
from ._partition import Partition as Partition
from ._partition import PositionalIds as PositionalIds
from ._partitioners import dirichlet as dirichlet
from ._partitioners import iid as iid
from ._partitioners import natural as natural
from ._partitioners import quantity_skew as quantity_skew
from ._partitioners import shards as shards

__all__ = [
    "ChecksumError",
    "ClientData",
    "ClientId",
    "DataFileError",
    "Dataset",
    "DatasetInfo",
    "ExampleRows",
    "Examples",
    "Partition",
    "PositionalIds",
    "available_datasets",
    "dirichlet",
    "iid",
    "load_dataset",
    "natural",
    "quantity_skew",
    "shards",
]
