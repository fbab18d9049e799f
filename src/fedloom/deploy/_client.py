"""A device: connects out to the server, pulls tasks, trains on its own data.

The client dials the server (devices sit behind NAT), long-polls ``GetTask``, runs
the named client work from its own installation on its own examples, sends a
heartbeat while it trains, and streams the update back in chunks. On a lost
connection it reconnects by itself, with exponential backoff and jitter; it stops
when the server says the run is over.

Example (with a server listening)::

    from fedloom.deploy import DeviceClient
    from fedloom.learning import build_model

    client = DeviceClient(
        "localhost:8765", token=open("phone-1.token").read().strip(),
        examples=my_examples, model=build_model("2nn", (1, 8, 8), 10),
        root_certificates=open("certs/ca.pem", "rb").read())
    client.run()   # returns the number of tasks done when the run ends
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from fedloom.data import Examples
from fedloom.learning import ClientInput, ClientResult, FunctionalModel, Params

from ._auth import AUTH_METADATA
from ._proto import deploy_pb2 as pb
from ._proto import deploy_pb2_grpc as pb_grpc
from ._registry import client_work
from ._wire import TensorAssembler, WireError, tensor_chunks

__all__ = ["ClientRefused", "DeviceClient"]

logger = logging.getLogger("fedloom.deploy")

ModelSource = FunctionalModel | Callable[[Mapping[str, Any]], FunctionalModel]
"""The device's model, or a function of the task's configuration that builds it
(``task_model`` builds the built-in model it names, in its ``autocast`` precision
where the server's run sets one)."""

_RETRY_LATER = {grpc.StatusCode.RESOURCE_EXHAUSTED}
_TASK_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
_REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_BAD_TASKS = 5
"""Tasks in a row this device cannot take (backing off between them) before it
stops with :class:`ClientRefused`."""


class ClientRefused(RuntimeError):
    """The server refused this client (an unknown or missing token), or sent
    tasks this device cannot take (a model that does not fit its data)."""


@dataclass(frozen=True)
class _Task:
    header: pb.TaskHeader
    config: dict[str, Any]
    params: Params


class DeviceClient:
    """One device taking part in a deployed run.

    ``server`` is ``HOST:PORT``; ``token`` the client's secret; ``examples`` its
    own data; ``model`` its model (or a function of the task config that builds
    it: the built-in CLI client builds the model the server's task names).
    ``root_certificates`` (PEM) verify the server; ``insecure=True`` speaks
    plaintext (tests on 127.0.0.1 only). ``give_up_after`` seconds without
    reaching the server end the client with a ``ConnectionError``. ``threads``
    sets PyTorch's intra-op threads while it runs (``None`` leaves them): local
    training on small batches is fastest with one, as in simulation.
    """

    def __init__(
        self,
        server: str,
        *,
        token: str,
        examples: Examples,
        model: ModelSource,
        root_certificates: bytes | None = None,
        insecure: bool = False,
        max_message_bytes: int = 4 << 20,
        chunk_bytes: int = 1 << 20,
        backoff: tuple[float, float] = (0.2, 10.0),
        give_up_after: float | None = None,
        threads: int | None = 1,
        name: str = "client",
    ) -> None:
        if not insecure and root_certificates is None:
            raise ValueError(
                "root_certificates (the server's CA, PEM) are required, "
                "or insecure=True for tests on 127.0.0.1"
            )
        self.server = server
        self.examples = examples
        self.name = name
        self.tasks_done = 0
        self._metadata = ((AUTH_METADATA, f"Bearer {token}"),)
        self._model_source = model
        self._model: FunctionalModel | None = (
            model if isinstance(model, FunctionalModel) else None
        )
        self._root_certificates = root_certificates
        self._insecure = insecure
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._chunk_bytes = chunk_bytes
        self._backoff = backoff
        self._give_up_after = give_up_after
        self._threads = threads

    def run(self) -> int:
        """Take part until the run ends; returns the number of tasks done."""
        threads = torch.get_num_threads()
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        try:
            return asyncio.run(self.run_async())
        finally:
            torch.set_num_threads(threads)

    async def run_async(self) -> int:
        """:meth:`run` as a coroutine (many clients can share one event loop)."""
        delay = self._backoff[0]
        last_contact = time.monotonic()
        bad_tasks = 0
        while True:
            try:
                async with self._channel() as channel:
                    stub = pb_grpc.CoordinatorStub(channel)
                    while True:
                        try:
                            task = await self._get_task(stub)
                        except ValueError as error:  # WireError, bad JSON
                            # A model that does not fit this device's data, say:
                            # waiting cannot mend it, and the server would count a
                            # client that keeps asking as one that takes part.
                            bad_tasks += 1
                            if bad_tasks == _BAD_TASKS:
                                raise ClientRefused(
                                    f"{self.name}: {bad_tasks} tasks in a row from "
                                    f"{self.server} do not fit this device: {error}"
                                ) from None
                            logger.warning("%s: bad task: %s", self.name, error)
                            await asyncio.sleep(delay)
                            delay = min(delay * 2, self._backoff[1])
                            continue
                        bad_tasks = 0
                        delay, last_contact = self._backoff[0], time.monotonic()
                        if task == "finished":
                            logger.info("%s: the run is over", self.name)
                            return self.tasks_done
                        if isinstance(task, _Task):
                            await self._do(stub, task)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code in _REFUSED:
                    raise ClientRefused(
                        f"{self.server} refused {self.name}: {error.details()}"
                    ) from None
                waited = time.monotonic() - last_contact
                if self._give_up_after is not None and waited > self._give_up_after:
                    raise ConnectionError(
                        f"{self.name}: no contact with {self.server} for "
                        f"{waited:.0f} s: {code.name} {error.details()}"
                    ) from None
                logger.info(
                    "%s: %s (%s); again in %.1f s",
                    self.name, code.name, error.details(), delay,
                )  # fmt: skip
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self._backoff[1])

    @contextlib.asynccontextmanager
    async def _channel(self) -> AsyncIterator[grpc.aio.Channel]:
        if self._insecure:
            channel = grpc.aio.insecure_channel(self.server, options=self._options)
        else:
            credentials = grpc.ssl_channel_credentials(self._root_certificates)
            channel = grpc.aio.secure_channel(
                self.server, credentials, options=self._options
            )
        try:
            yield channel
        finally:
            await channel.close()

    def _model_for(self, config: Mapping[str, Any]) -> FunctionalModel:
        if self._model is None:
            assert not isinstance(self._model_source, FunctionalModel)
            self._model = self._model_source(config)
        return self._model

    async def _get_task(self, stub: pb_grpc.CoordinatorStub) -> _Task | str | None:
        call = stub.GetTask(pb.TaskRequest(), metadata=self._metadata, timeout=300)
        header: pb.TaskHeader | None = None
        assembler: TensorAssembler | None = None
        config: dict[str, Any] = {}
        chunks = 0
        async for message in call:
            if message.HasField("header"):
                header = message.header
                if header.finished:
                    return "finished"
                if not header.task_id:
                    return None
                config = json.loads(header.config_json)
                # in a thread: init() waits while another client's work sharing
                # the model trains, which must not hold up this event loop
                template = await asyncio.to_thread(self._model_for(config).init)
                assembler = TensorAssembler(template)
            elif assembler is None or header is None:
                raise WireError("a task starts with its header")
            else:
                assembler.add(message.chunk)
                chunks += 1
        if header is None or assembler is None or chunks != header.num_chunks:
            return None  # the stream broke off; ask again
        return _Task(header, config, assembler.finish())

    async def _do(self, stub: pb_grpc.CoordinatorStub, task: _Task) -> None:
        header = task.header
        try:
            work = client_work(
                header.client_work, self._model_for(task.config), task.config
            )
            seed = int(task.config.get("seed", 0))
        except (LookupError, ValueError, TypeError) as error:
            logger.error("%s: cannot run task %s: %s", self.name, header.task_id, error)
            await asyncio.sleep(1.0)  # the round goes on without this client
            return
        beats = asyncio.create_task(self._heartbeats(stub, header.task_id, task.config))
        try:
            data = ClientInput(self.examples, seed)
            result = await asyncio.to_thread(work, task.params, data)
        except Exception:  # a bug in client work: the round goes on without us
            logger.exception("%s: client work %s failed", self.name, header.client_work)
            return
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await beats
        try:
            reply = await stub.SubmitResult(
                self._result_messages(header.task_id, result),
                metadata=self._metadata,
                timeout=120,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() not in _TASK_ERRORS | _RETRY_LATER:
                raise
            logger.warning("%s: result refused: %s", self.name, error.details())
            return
        if reply.accepted:
            self.tasks_done += 1
            logger.info("%s: round %d done", self.name, header.round + 1)
        else:
            logger.info("%s: result not used: %s", self.name, reply.reason)

    async def _heartbeats(
        self, stub: pb_grpc.CoordinatorStub, task_id: str, config: Mapping[str, Any]
    ) -> None:
        period = float(config.get("heartbeat_seconds", 2.0))
        while True:
            await asyncio.sleep(period)
            await stub.Heartbeat(
                pb.HeartbeatRequest(task_id=task_id),
                metadata=self._metadata,
                timeout=30,
            )

    def _result_messages(
        self, task_id: str, result: ClientResult
    ) -> Iterator[pb.ResultMessage]:
        metrics = {k: float(v) for k, v in result.metrics.items()}
        header = pb.ResultHeader(
            task_id=task_id,
            weight=float(result.weight),
            metrics_json=json.dumps(metrics),
        )
        yield pb.ResultMessage(header=header)
        for chunk in tensor_chunks(result.update, self._chunk_bytes):
            yield pb.ResultMessage(chunk=chunk)
