"""Partitioners: split one labelled dataset into a population of clients.

All take the labels (or keys) as a NumPy array and return a :class:`Partition`
whose client ids are ``"0".."n-1"`` (``str(key)`` for :func:`natural`). The
result is a pure function of the arguments and ``seed``.
"""

from __future__ import annotations

import numpy as np

from ._partition import Partition, PositionalIds, from_groups

# Bounded resampling in `dirichlet`: with 100 clients, alpha=0.05 and 10 classes
# of 6,000 examples roughly one draw in 20 gives every client an example.
_DIRICHLET_MAX_DRAWS = 1000


def _check_labels(labels: np.ndarray, num_clients: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise TypeError(f"num_clients must be an int, got {num_clients!r}")
    if num_clients <= 0:
        raise ValueError(f"num_clients must be positive, got {num_clients}")
    if num_clients > len(labels):
        raise ValueError(
            f"num_clients={num_clients} is more than the {len(labels)} examples; "
            "every client needs at least one example"
        )
    return labels


def _check_min_size(min_size: int, num_clients: int, n: int) -> None:
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if min_size * num_clients > n:
        raise ValueError(
            f"min_size={min_size} for {num_clients} clients needs "
            f"{min_size * num_clients} examples, but there are only {n}"
        )


def _split(order: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return np.split(order, np.cumsum(sizes)[:-1])


def _dealt(order: np.ndarray, sizes: np.ndarray) -> Partition:
    """Client i gets the next ``sizes[i]`` entries of ``order`` (sorted within it).

    The same partition as ``from_groups(_split(order, sizes))``, built with array
    operations only: no array per client, even for a million clients.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    client = np.repeat(np.arange(len(sizes)), sizes)
    indices = order[np.lexsort((order, client))]
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])
    return Partition(PositionalIds(len(sizes)), offsets, indices)


def iid(labels: np.ndarray, num_clients: int, *, seed: int) -> Partition:
    """Shuffle the examples and deal them out in equal parts.

    Client sizes differ by at most one; the first ``n % num_clients`` clients get
    the extra example.

    Example:
        >>> import numpy as np
        >>> iid(np.zeros(10, int), 3, seed=0).sizes().tolist()
        [4, 3, 3]
    """
    labels = _check_labels(labels, num_clients)
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    sizes = np.full(num_clients, n // num_clients, dtype=np.int64)
    sizes[: n % num_clients] += 1
    return _dealt(order, sizes)


def shards(
    labels: np.ndarray, num_clients: int, *, shards_per_client: int = 2, seed: int
) -> Partition:
    """Sort by label, cut into equal shards, give each client a few random shards.

    The pathological non-IID split of McMahan et al. 2017 ("Communication-
    Efficient Learning of Deep Networks from Decentralized Data", Sec. 3): with
    60,000 MNIST images and 100 clients, 200 shards of 300, two per client, so
    most clients see only two digits.

    When ``len(labels)`` is not a multiple of ``num_clients * shards_per_client``
    the remainder is dropped: that many examples, chosen uniformly at random
    (seeded), belong to no client. Picking them at random rather than cutting
    the tail of the sorted order keeps the last class from losing them all.

    Example:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(4), 5)  # 20 examples, 4 classes
        >>> p = shards(labels, 2, shards_per_client=2, seed=0)
        >>> p.sizes().tolist()
        [10, 10]
    """
    labels = _check_labels(labels, num_clients)
    if shards_per_client <= 0:
        raise ValueError(f"shards_per_client must be positive, got {shards_per_client}")
    n = len(labels)
    num_shards = num_clients * shards_per_client
    shard_size = n // num_shards
    if shard_size == 0:
        raise ValueError(
            f"{num_clients} clients x {shards_per_client} shards need at least "
            f"{num_shards} examples, got {n}"
        )
    rng = np.random.default_rng(seed)
    keep = np.arange(n)
    remainder = n - num_shards * shard_size
    if remainder:
        keep = np.sort(rng.choice(n, size=n - remainder, replace=False))
    order = keep[np.argsort(labels[keep], kind="stable")]
    shard_of = order.reshape(num_shards, shard_size)
    assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return from_groups([shard_of[a].reshape(-1) for a in assignment])


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> Partition:
    """Split each class over the clients in Dirichlet(alpha) proportions.

    For every class c, draw p_c ~ Dir(alpha, ..., alpha) over the clients and give
    client k a share p_c[k] of class c's examples (Hsu et al. 2019, "Measuring the
    Effects of Non-Identical Data Distribution"; Yurochkin et al. 2019). Small
    ``alpha`` (0.05) gives each client a few classes; large ``alpha`` (1e6) tends
    to IID. Client sizes vary too. If some client gets fewer than ``min_size``
    examples, all proportions are drawn again, at most 1000 times, then a
    ValueError is raised.

    Example:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(10), 100)
        >>> p = dirichlet(labels, 5, alpha=0.5, seed=0)
        >>> len(p), int(p.sizes().sum())
        (5, 1000)
    """
    labels = _check_labels(labels, num_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    _check_min_size(min_size, num_clients, len(labels))
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(_DIRICHLET_MAX_DRAWS):
        groups: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in by_class:
            shuffled = rng.permutation(members)
            share = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.floor(np.cumsum(share)[:-1] * len(shuffled)).astype(np.int64)
            for k, part in enumerate(np.split(shuffled, cuts)):
                groups[k].append(part)
        merged = [np.concatenate(g) for g in groups]
        if min(len(g) for g in merged) >= min_size:
            return from_groups(merged)
    raise ValueError(
        f"dirichlet: no draw out of {_DIRICHLET_MAX_DRAWS} gave all {num_clients} "
        f"clients at least min_size={min_size} examples with alpha={alpha}; "
        "use fewer clients, a larger alpha, or a smaller min_size"
    )


def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    *,
    seed: int,
    sigma: float = 1.0,
    min_size: int = 1,
) -> Partition:
    """IID labels, but client sizes drawn from a lognormal(0, sigma).

    Every client first gets ``min_size`` examples; the rest are shared in
    proportion to lognormal weights (largest-remainder rounding, so the sizes add
    up to ``len(labels)`` exactly). ``sigma=0`` gives equal sizes.

    Example:
        >>> import numpy as np
        >>> p = quantity_skew(np.zeros(1000, int), 10, seed=0, sigma=1.0)
        >>> int(p.sizes().sum()), int(p.sizes().min()) >= 1
        (1000, True)
    """
    labels = _check_labels(labels, num_clients)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    n = len(labels)
    _check_min_size(min_size, num_clients, n)
    rng = np.random.default_rng(seed)
    # lognormal weights, scaled by their largest in log space (no overflow at a
    # large sigma; the same shares)
    logs = rng.normal(0.0, sigma, num_clients)
    weights = np.exp(logs - logs.max())
    spare = n - min_size * num_clients
    exact = weights / weights.sum() * spare
    sizes = np.floor(exact).astype(np.int64)
    short = spare - int(sizes.sum())
    sizes[np.argsort(sizes - exact, kind="stable")[:short]] += 1
    sizes += min_size
    return _dealt(rng.permutation(n), sizes)


def natural(keys: np.ndarray) -> Partition:
    """One client per distinct key (a writer, a user, a device), ids ``str(key)``.

    Clients come in sorted key order.

    Example:
        >>> import numpy as np
        >>> p = natural(np.array([7, 3, 7, 3, 3]))
        >>> p.client_ids, p.client_indices(0).tolist()
        (('3', '7'), [1, 3, 4])
    """
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be 1-D, got shape {keys.shape}")
    unique, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse.reshape(-1), minlength=len(unique))
    return from_groups(_split(order, sizes), [str(k) for k in unique])
