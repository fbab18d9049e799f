"""The gRPC service against bad callers: no token, wrong token, too many calls,
oversized, garbled and fuzzed messages. It answers each with a clear status, keeps
serving, and lets no bad update through."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from service_harness import TEMPLATE, Service, result_messages

from fedloom.deploy._proto import deploy_pb2 as pb
from fedloom.deploy._service import _metrics, _weight
from fedloom.deploy._wire import TensorAssembler, WireError


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    started = Service(tmp_path, rate_limit=10_000.0, rate_burst=10_000)
    try:
        yield started
    finally:
        started.close()


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()


def test_a_call_without_a_token_is_unauthenticated(service: Service) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(service.stub.GetTask(pb.TaskRequest()))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no client token" in caught.value.details()


def test_an_unknown_token_is_unauthenticated(service: Service) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.Heartbeat(
            pb.HeartbeatRequest(), metadata=(("authorization", "Bearer guess"),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown client token" in caught.value.details()


def test_calls_over_the_rate_limit_are_refused(tmp_path: Path) -> None:
    service = Service(tmp_path, rate_limit=0.01, rate_burst=3)
    try:
        for _ in range(3):
            assert service.alive()
        code = _code(service.alive)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert service.alive("client-1")  # another client has its own bucket
    finally:
        service.close()


def test_no_task_then_the_task_and_again_after_a_reconnect(service: Service) -> None:
    (idle,) = service.get_task("client-0")  # waits poll_seconds, then "none yet"
    assert idle.header.task_id == "" and not idle.header.finished
    opened = service.open_round(("client-0",))
    first = service.get_task("client-0")
    assert first[0].header.task_id == opened.task_id
    assert first[0].header.num_chunks == len(first) - 1
    # The connection broke before the result was sent: asking again gets the
    # same round's task.
    again = service.get_task("client-0")
    assert again[0].header.task_id == opened.task_id
    (outsider,) = service.get_task("client-2")  # not in the cohort
    assert outsider.header.task_id == ""


def test_a_result_for_a_stale_task_is_refused(service: Service) -> None:
    opened = service.open_round(("client-0",))
    code = _code(
        lambda: service.stub.SubmitResult(
            result_messages("0-stale", TEMPLATE), metadata=service.metadata("client-0")
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert opened.waiting_for("client-0")


def test_an_oversized_message_is_refused_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    service = Service(tmp_path, max_message_bytes=1 << 16, chunk_bytes=1024)
    try:
        opened = service.open_round(("client-0",))
        big = pb.TensorChunk(
            name="w", dtype="float32", shape=[2, 3], data=bytes(1 << 17)
        )

        def messages() -> Iterator[pb.ResultMessage]:
            yield pb.ResultMessage(header=pb.ResultHeader(task_id=opened.task_id))
            yield pb.ResultMessage(chunk=big)

        code = _code(
            lambda: service.stub.SubmitResult(
                messages(), metadata=service.metadata("client-0")
            )
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert opened.waiting_for("client-0")  # nothing was offered
        assert service.alive()
    finally:
        service.close()


def test_bytes_that_are_not_protobuf_do_not_crash_the_server(service: Service) -> None:
    opened = service.open_round(("client-0",))
    raw = service.channel.stream_unary(
        "/fedloom.deploy.v1.Coordinator/SubmitResult",
        request_serializer=lambda data: data,
        response_deserializer=pb.SubmitReply.FromString,
    )
    with pytest.raises(grpc.RpcError):
        raw(
            iter([b"\xff\xfe garbage \x00" * 10]), metadata=service.metadata("client-0")
        )
    assert opened.waiting_for("client-0")
    assert service.alive()


def _well_formed(task_id: str, messages: list[pb.ResultMessage]) -> bool:
    """Whether the server's checks would accept this stream (the test's oracle)."""
    if not messages or not messages[0].HasField("header"):
        return False
    header = messages[0].header
    if header.task_id != task_id:
        return False
    assembler = TensorAssembler(TEMPLATE)
    try:
        _weight(header.weight)
        _metrics(header.metrics_json)
        for message in messages[1:]:
            if not message.HasField("chunk"):
                return False
            assembler.add(message.chunk)
        assembler.finish()
    except WireError:
        return False
    return True


def _chunk(name: str, dtype: str, shape: list[int], offset: int, data: bytes) -> object:
    chunk = pb.TensorChunk(
        name=name, dtype=dtype, shape=shape, offset=offset, data=data
    )
    return pb.ResultMessage(chunk=chunk)


def _header(task_id: str, weight: float, metrics: str) -> object:
    header = pb.ResultHeader(task_id=task_id, weight=weight, metrics_json=metrics)
    return pb.ResultMessage(header=header)


def test_fuzzed_results_are_refused_and_never_reach_the_aggregate(
    service: Service,
) -> None:
    opened = service.open_round(("client-0", "client-1"), target=2)
    task = opened.task_id
    chunks = st.builds(
        _chunk,
        st.sampled_from(["w", "b", "x", ""]) | st.text(max_size=4),
        st.sampled_from(["float32", "float64", "int64", "bfloat16", "nope"]),
        st.sampled_from([[2, 3], [3], [], [3, 2], [-1]])
        | st.lists(st.integers(-3, 6), max_size=3),
        st.sampled_from([0, 4, 8, 12, 24]) | st.integers(-5, 64),
        st.binary(max_size=40)
        | st.sampled_from([bytes(12), bytes(24), b"\x00\x00\xc0\x7f" * 3]),
    )
    headers = st.builds(
        _header,
        st.sampled_from([task, "0-other", ""]),
        st.floats() | st.sampled_from([1.0, -1.0, 0.0]),
        st.sampled_from(['{"train_loss": 1}', "{", "[]", '{"a": "x"}', '{"a": NaN}'])
        | st.text(max_size=12),
    )
    streams = st.lists(headers | chunks | st.just(pb.ResultMessage()), max_size=8)
    with_header = st.tuples(headers, st.lists(chunks, max_size=7)).map(
        lambda pair: [pair[0], *pair[1]]
    )

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(streams | with_header)
    def fuzz(messages: list[pb.ResultMessage]) -> None:
        assume(not _well_formed(task, messages))
        with pytest.raises(grpc.RpcError) as caught:
            service.stub.SubmitResult(
                iter(messages), metadata=service.metadata("client-1"), timeout=10
            )
        assert caught.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), caught.value.details()
        assert opened.waiting_for("client-1")  # nothing was offered

    fuzz()
    assert service.alive()

    # A good result still goes through, and it is the only one that ever arrived.
    arrived = []

    def consume() -> None:
        for submission in opened.submissions():
            arrived.append(submission)
            opened.settle(submission, None)

    consumer = threading.Thread(target=consume)
    consumer.start()
    good = {"w": torch.ones(2, 3), "b": torch.full((3,), 2.0)}
    reply = service.stub.SubmitResult(
        result_messages(task, good), metadata=service.metadata("client-1"), timeout=10
    )
    assert reply.accepted
    opened.close()
    consumer.join(10)
    assert [s.client for s in arrived] == ["client-1"]
    torch.testing.assert_close(arrived[0].result.update, good)
    assert float(arrived[0].result.weight) == 3.0


def test_a_device_that_cannot_take_the_tasks_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A model that does not fit the device's data: asking again, it would look
    # alive to the server and hold up every round until its deadline.
    from fedloom.data import Examples
    from fedloom.deploy import ClientRefused, DeviceClient
    from fedloom.learning import build_model

    asked: list[float] = []

    async def unfit(self: DeviceClient, stub: object) -> None:
        asked.append(time.monotonic())
        raise WireError("tensor '1.weight' has shape (200, 784), expected (200, 64)")

    monkeypatch.setattr(DeviceClient, "_get_task", unfit)
    client = DeviceClient(
        "127.0.0.1:9",  # never reached: the task is refused first
        token="t",
        examples=Examples(torch.zeros(1, 64), torch.zeros(1, dtype=torch.int64)),
        model=build_model("logistic", (64,), 10),
        insecure=True,
        backoff=(0.01, 0.04),
    )
    with pytest.raises(ClientRefused, match=r"5 tasks in a row .* do not fit"):
        client.run()
    waits = [b - a for a, b in itertools.pairwise(asked)]
    assert len(asked) == 5 and waits[-1] > waits[0]  # backing off
