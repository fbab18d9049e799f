"""The Federated Core's intrinsics mean the same on every CPU runtime, edge cases
included: integer sums, shapes that do not match, extreme weights, aggregators of
one's own, functions that modify their arguments, misuse of the API."""

import operator
from typing import NamedTuple

import numpy as np
import pytest
import torch

from fedloom.aggregators import checked
from fedloom.core import (
    CLIENTS,
    SERVER,
    LocalRuntime,
    Mean,
    PlacementError,
    aggregate,
    apply,
    broadcast,
    computation,
    map,
    mean,
    sum,
)
from fedloom.runtimes import VectorizedRuntime

RUNTIMES = {
    "local": LocalRuntime,
    "vectorized": VectorizedRuntime,
    "vectorized-chunked": lambda: VectorizedRuntime(chunk_size=2),
}
pytestmark = pytest.mark.parametrize("runtime", RUNTIMES)


def _run(fn, *args, runtime, **kwargs):
    return fn(*args, runtime=RUNTIMES[runtime](), **kwargs)


def test_integer_sums_are_exact(runtime):
    big = 2**53 + 1  # not a float64
    total = _run(
        computation(CLIENTS)(sum),
        [torch.tensor([big, 1]), torch.tensor([0, 2])],
        runtime=runtime,
    )
    assert total.dtype == torch.int64 and total.tolist() == [big, 3]
    assert _run(computation(CLIENTS)(sum), [big, 1], runtime=runtime) == big + 1
    counts = _run(
        computation(CLIENTS, CLIENTS)(sum),
        [torch.tensor([1, 0])] * 3,
        [1, 2, 3],
        runtime=runtime,
    )
    assert counts.tolist() == [6, 0]
    average = _run(
        computation(CLIENTS)(mean),
        [torch.tensor([1, 2]), torch.tensor([2, 2])],
        runtime=runtime,
    )
    assert average.dtype == torch.float64 and average.tolist() == [1.5, 2.0]


def test_values_of_another_shape_are_refused_not_broadcast(runtime):
    with pytest.raises(ValueError, match=r"entry 0 of shape \(1,\), expected \(3,\)"):
        _run(computation(CLIENTS)(sum), [torch.ones(3), torch.ones(1)], runtime=runtime)


def test_extreme_weights_give_the_mean(runtime):
    weighted = computation(CLIENTS, CLIENTS)(mean)
    for tiny in [1e-310, 1e-300]:
        got = _run(
            weighted,
            [torch.tensor(5.0, dtype=torch.float64)] * 2,
            [tiny, tiny],
            runtime=runtime,
        )
        assert float(got) == pytest.approx(5.0)


def test_a_weight_that_is_not_a_scalar_is_named(runtime):
    weighted = computation(CLIENTS, CLIENTS)(mean)
    with pytest.raises(ValueError, match="a weight must be a scalar"):
        _run(weighted, [torch.ones(2)] * 2, [torch.ones(2)] * 2, runtime=runtime)


class _ClippedMean(Mean):
    """Each update clipped to norm 1 before the mean: overrides accumulate alone."""

    def accumulate(self, accumulator, value, weight):
        return super().accumulate(
            accumulator, value / max(1.0, float(value.norm())), weight
        )


@pytest.mark.parametrize("wrap", [lambda a: a, checked])
def test_an_aggregator_that_overrides_accumulate_sees_every_client(runtime, wrap):
    @computation(CLIENTS)
    def clipped(xs):
        return aggregate(wrap(_ClippedMean()), xs)

    got = _run(
        clipped, [torch.tensor([100.0, 0.0]), torch.tensor([0.0, 1.0])], runtime=runtime
    )
    torch.testing.assert_close(got, torch.tensor([0.5, 0.5]))


def test_checked_refuses_non_finite_numpy_values(runtime):
    @computation(CLIENTS)
    def average(xs):
        return aggregate(checked(Mean()), xs)

    with pytest.raises(ValueError, match="NaN or infinity"):
        _run(average, [np.array([np.nan]), np.array([1.0])], runtime=runtime)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_checked_names_the_client_with_a_non_finite_value(runtime, bad):
    @computation(CLIENTS)
    def average(xs):
        return aggregate(checked(Mean()), xs)

    values = [{"a": torch.ones(3), "b": torch.ones(2, 2)} for _ in range(5)]
    values[3]["b"][1, 0] = bad
    with pytest.raises(ValueError, match=r"client 3: entry 1 .*NaN or infinity"):
        _run(average, values, runtime=runtime)
    values[3]["b"][1, 1] = -bad  # inf - inf: the sum is NaN, still client 3's
    with pytest.raises(ValueError, match=r"client 3: entry 1 .*NaN or infinity"):
        _run(average, values, runtime=runtime)


def test_checked_takes_finite_values_whose_sum_overflows(runtime):
    # Each tensor's sum overflows float32 (a quick proof of finiteness fails), yet
    # every value is finite, and the mean, accumulated in float64, is too.
    @computation(CLIENTS)
    def average(xs):
        return aggregate(checked(Mean()), xs)

    big = torch.full((4,), 3e38)
    got = _run(average, [big, big.neg(), big], runtime=runtime)
    torch.testing.assert_close(got, torch.full((4,), 1e38))


class _Result(NamedTuple):
    update: dict[str, torch.Tensor]
    weight: torch.Tensor


def test_a_map_of_a_getter_picks_each_clients_part(runtime):
    # The vectorized runtime picks a field from the stacked results (no vmap); a
    # getter of a tensor's own attribute or item is each client's, not the stack's.
    @computation(CLIENTS)
    def parts(xs):
        results = map(lambda x: _Result({"w": 2 * x}, x.sum()), xs)
        return (
            sum(map(operator.attrgetter("update"), results)),
            sum(map(operator.attrgetter("weight"), results)),
            sum(map(lambda r: operator.itemgetter("w")(r.update), results)),
            sum(map(operator.itemgetter(0), xs)),
            sum(map(operator.attrgetter("mT"), xs)),
        )

    xs = [torch.arange(4.0).reshape(2, 2) + c for c in range(3)]
    update, weight, w, first_rows, transposed = _run(parts, xs, runtime=runtime)
    total = torch.stack(xs).sum(dim=0)
    torch.testing.assert_close(update["w"], 2 * total)
    torch.testing.assert_close(w, 2 * total)
    torch.testing.assert_close(weight, total.sum())
    torch.testing.assert_close(first_rows, total[0])
    torch.testing.assert_close(transposed, total.T)


def test_a_function_that_modifies_its_arguments_is_refused(runtime):
    @computation(SERVER, CLIENTS)
    def add_into_the_broadcast(w, xs):
        return sum(map(lambda w, x: w.add_(x), broadcast(w), xs))

    w = torch.zeros(2)
    with pytest.raises(ValueError, match="modified its arguments in place"):
        _run(add_into_the_broadcast, w, [torch.ones(2)] * 3, runtime=runtime)

    @computation(CLIENTS)
    def scaled_then_read(xs):  # .item() fails under vmap, after the mul_
        return map(lambda x: float(x.mul_(10).sum()), xs)

    with pytest.raises(ValueError, match="modified its arguments in place"):
        _run(scaled_then_read, [torch.ones(2), torch.ones(2)], runtime=runtime)


def test_placed_values_have_no_truth_value(runtime):
    @computation(SERVER, CLIENTS)
    def maybe_doubled(double, xs):
        return mean(map(lambda x: 2 * x, xs)) if double else mean(xs)

    with pytest.raises(PlacementError, match="no truth value"):
        _run(maybe_doubled, False, [1.0, 3.0], runtime=runtime)


def test_apply_cannot_move_client_values_to_the_server(runtime):
    @computation(SERVER, CLIENTS)
    def leak(s, xs):
        return apply(lambda v: {"raw": xs, "s": v}, s)

    with pytest.raises(PlacementError, match="only through an aggregation"):
        _run(leak, 1.0, [1.0, 2.0], runtime=runtime)


class _Both(NamedTuple):
    mean: float
    values: list


def test_placed_values_in_any_container_are_unwrapped(runtime):
    @computation(CLIENTS)
    def containers(xs):
        return {"mean": mean(xs)}, [sum(xs)], _Both(mean(xs), map(lambda x: x, xs))

    as_dict, as_list, named = _run(containers, [1.0, 3.0], runtime=runtime)
    assert as_dict == {"mean": 2.0} and as_list == [4.0]
    assert isinstance(named, _Both) and named.mean == 2.0 and named.values == [1.0, 3.0]


@pytest.mark.parametrize("wrong", [{7: 20.0, 9: 22.0}, "hello", 3.0, torch.tensor(1.0)])
def test_a_clients_argument_is_a_sequence(runtime, wrong):
    with pytest.raises(TypeError, match="one member per client"):
        _run(computation(CLIENTS)(mean), wrong, runtime=runtime)


def test_a_computation_needs_placements_and_a_runtime_object(runtime):
    with pytest.raises(TypeError, match="takes the placements"):
        computation(lambda xs: mean(xs))
    with pytest.raises(TypeError, match="a runtime object"):
        computation(CLIENTS)(mean)([1.0], runtime=runtime)
