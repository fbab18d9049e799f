"""fedloom: federated learning on PyTorch.

Subpackages: :mod:`fedloom.core` (the Federated Core), :mod:`fedloom.data`,
:mod:`fedloom.aggregators`, :mod:`fedloom.learning`, :mod:`fedloom.runtimes`,
:mod:`fedloom.experiments`. Importing fedloom imports none of them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
