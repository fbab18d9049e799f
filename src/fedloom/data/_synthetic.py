"""Synthetic(alpha, beta): FedProx's heterogeneous logistic-regression data."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._examples import Dataset, Examples

_DIMENSION = 60
_NUM_CLASSES = 10


def synthetic(
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 30,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Generate Synthetic(alpha, beta) of Li et al. 2020 (FedProx), after Shamir et al.

    For client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k ~ N(u_k, 1) (10x60),
    b_k ~ N(u_k, 1); v_k ~ N(B_k, 1) (60-dim); x ~ N(v_k, Sigma) with Sigma
    diagonal, Sigma_jj = j^-1.2; y = argmax(softmax(W_k x + b_k)). ``alpha``
    controls how much the clients' models differ, ``beta`` how much their inputs
    differ. As in the paper's generator (``data/synthetic_*/generate_niid.py``),
    ``alpha`` and ``beta`` are used as standard deviations, and client k has
    ``floor(lognormal(4, 2)) + 50`` examples, a heavy-tailed size distribution.

    The last ``round(test_fraction * n_k)`` examples of each client form the test
    split (examples within a client are i.i.d., so this is a random hold-out);
    ``client_keys`` gives each train example its client index.

    Example:
        >>> ds = synthetic(alpha=0.5, beta=0.5, num_clients=5, seed=1)
        >>> ds.input_shape, ds.num_classes, len(set(ds.client_keys.tolist()))
        ((60,), 10, 5)
    """
    if num_clients <= 0:
        raise ValueError(f"num_clients must be positive, got {num_clients}")
    if not (0 <= alpha < math.inf and 0 <= beta < math.inf):  # NaN fails too
        raise ValueError(f"alpha and beta must be finite and >= 0, got {alpha}, {beta}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50
    model_mean = rng.normal(0.0, alpha, num_clients)  # u_k
    input_mean = rng.normal(0.0, beta, num_clients)  # B_k
    scale = np.arange(1, _DIMENSION + 1, dtype=np.float64) ** (-1.2 / 2)
    xs, ys, keys, test_xs, test_ys = [], [], [], [], []
    for k in range(num_clients):
        weight = rng.normal(model_mean[k], 1.0, (_NUM_CLASSES, _DIMENSION))
        bias = rng.normal(model_mean[k], 1.0, _NUM_CLASSES)
        center = rng.normal(input_mean[k], 1.0, _DIMENSION)  # v_k
        x = center + scale * rng.standard_normal((int(sizes[k]), _DIMENSION))
        # argmax of softmax is argmax of the logits.
        y = np.argmax(x @ weight.T + bias, axis=1)
        num_test = round(test_fraction * len(x))
        cut = len(x) - num_test
        xs.append(x[:cut])
        ys.append(y[:cut])
        keys.append(np.full(cut, k, dtype=np.int64))
        test_xs.append(x[cut:])
        test_ys.append(y[cut:])

    def block(parts_x: list[np.ndarray], parts_y: list[np.ndarray]) -> Examples:
        x = torch.from_numpy(np.concatenate(parts_x).astype(np.float32))
        return Examples(x, torch.from_numpy(np.concatenate(parts_y).astype(np.int64)))

    return Dataset(
        name="synthetic",
        train=block(xs, ys),
        test=block(test_xs, test_ys),
        num_classes=_NUM_CLASSES,
        input_shape=(_DIMENSION,),
        client_keys=np.concatenate(keys),
    )
