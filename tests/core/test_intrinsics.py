"""The Federated Core's intrinsics on the reference (local) runtime."""

import numpy as np
import pytest
import torch

from fedloom.core import (
    CLIENTS,
    SERVER,
    LocalRuntime,
    PlacementError,
    aggregate,
    apply,
    broadcast,
    computation,
    map,
    mean,
    sum,
)


def test_weighted_mean_matches_float64_reference():
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(7)]
    weights = rng.integers(1, 100, size=7)
    expected = np.average(
        np.stack(values).astype(np.float64), axis=0, weights=weights.astype(np.float64)
    )

    @computation(CLIENTS, CLIENTS)
    def weighted(v, w):
        return mean(v, weight=w)

    result = weighted([torch.from_numpy(v) for v in values], list(weights))
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_unweighted_mean_and_sum_of_nested_values():
    @computation(CLIENTS)
    def both(v):
        return mean(v), sum(v)

    members = [
        {"a": torch.tensor([1.0, 2.0]), "b": 3.0},
        {"a": torch.tensor([3.0, 6.0]), "b": 5.0},
    ]
    average, total = both(members)
    torch.testing.assert_close(average["a"], torch.tensor([2.0, 4.0]))
    assert average["b"] == 4.0
    torch.testing.assert_close(total["a"], torch.tensor([4.0, 8.0]))
    assert total["b"] == 8.0


def test_broadcast_map_apply_round_trip():
    @computation(SERVER, CLIENTS)
    def scaled_sum(scale, xs):
        products = map(lambda s, x: s * x, broadcast(scale), xs)
        return apply(lambda t: t + 1, sum(products))

    assert scaled_sum(2.0, [1.0, 2.0, 3.0], runtime=LocalRuntime()) == 13.0


def test_clients_results_come_back_as_lists():
    @computation(CLIENTS)
    def double(xs):
        return map(lambda x: 2 * x, xs)

    assert double([1, 2, 3]) == [2, 4, 6]


def test_computations_compose():
    @computation(CLIENTS)
    def total(xs):
        return sum(xs)

    @computation(SERVER, CLIENTS)
    def shifted(offset, xs):
        return apply(lambda a, b: a + b, offset, total(xs))

    assert shifted(10.0, [1.0, 2.0]) == 13.0


@pytest.mark.parametrize(
    ("intrinsic", "placement", "message"),
    [
        (
            lambda v: broadcast(v),
            CLIENTS,
            "broadcast expects a value placed at SERVER, got a value placed at CLIENTS",
        ),
        (
            lambda v: mean(v),
            SERVER,
            "mean expects a value placed at CLIENTS, got a value placed at SERVER",
        ),
        (
            lambda v: sum(v),
            SERVER,
            "sum expects a value placed at CLIENTS, got a value placed at SERVER",
        ),
        (
            lambda v: apply(abs, v),
            CLIENTS,
            "apply (argument 0) expects a value placed at SERVER, "
            "got a value placed at CLIENTS",
        ),
        (
            lambda v: map(abs, v),
            SERVER,
            "map (argument 0) expects a value placed at CLIENTS, "
            "got a value placed at SERVER",
        ),
    ],
)
def test_misplaced_value_names_intrinsic_and_placements(intrinsic, placement, message):
    run = computation(placement)(intrinsic)
    arg = [1.0, 2.0] if placement is CLIENTS else 1.0
    with pytest.raises(PlacementError) as error:
        run(arg, num_clients=2)
    assert message in str(error.value)


def test_unplaced_value_is_an_error():
    @computation(CLIENTS)
    def bad(xs):
        return mean([1.0, 2.0])

    with pytest.raises(
        PlacementError,
        match="mean expects a value placed at CLIENTS, got an unplaced list",
    ):
        bad([1.0])


def test_broadcast_without_clients_needs_num_clients():
    with pytest.raises(PlacementError, match="num_clients"):
        computation(SERVER)(broadcast)(1.0)
    assert computation(SERVER)(broadcast)(1.0, num_clients=3) == [1.0, 1.0, 1.0]


def test_client_arguments_must_agree_on_cohort_size():
    with pytest.raises(ValueError, match="disagree"):
        computation(CLIENTS, CLIENTS)(mean)([1.0, 2.0], [1.0])


def test_declared_placements_must_match_signature():
    with pytest.raises(TypeError, match="declares 2 placement"):
        computation(CLIENTS, CLIENTS)(lambda x: x)


def test_values_of_different_executions_do_not_mix():
    leaked = []

    @computation(CLIENTS)
    def keep(xs):
        leaked.append(xs)
        return sum(xs)

    keep([1.0])

    @computation(CLIENTS)
    def mix(xs):
        return map(lambda a, b: a + b, xs, leaked[0])

    with pytest.raises(PlacementError, match="different computations"):
        mix([2.0])


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_bad_weights_are_rejected(weight):
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        computation(CLIENTS, CLIENTS)(mean)([1.0, 2.0], [1.0, weight])


def test_zero_total_weight_is_an_error():
    with pytest.raises(ValueError, match="weights sum to zero"):
        computation(CLIENTS, CLIENTS)(mean)([1.0, 2.0], [0.0, 0.0])


def test_aggregate_uses_the_aggregator_protocol():
    class Maximum:
        def init(self, template):
            return None

        def accumulate(self, acc, value, weight):
            return value if acc is None else max(acc, value)

        def finalize(self, acc):
            return acc

    @computation(CLIENTS)
    def largest(xs):
        return aggregate(Maximum(), xs)

    assert largest([3, 9, 4]) == 9
