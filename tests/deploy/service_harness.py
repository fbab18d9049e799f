"""The server's gRPC service in this process, on 127.0.0.1, for tests that speak the
wire protocol directly (imported as ``service_harness``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import torch

from fedloom.deploy import DeployConfig, TaskSpec, TokenBook, write_client_tokens
from fedloom.deploy._proto import deploy_pb2 as pb
from fedloom.deploy._proto import deploy_pb2_grpc as pb_grpc
from fedloom.deploy._round import OpenRound
from fedloom.deploy._server import server_options
from fedloom.deploy._service import Coordinator
from fedloom.deploy._store import Store
from fedloom.deploy._wire import tensor_chunks

TEMPLATE = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


class Service:
    """A :class:`Coordinator` served on an event loop thread; a blocking stub."""

    def __init__(self, directory: Path, clients: int = 3, **settings: Any) -> None:
        self.tokens = write_client_tokens(directory / "certs", clients)
        self.settings = DeployConfig(
            tokens=str(directory / "certs" / "tokens.json"),
            insecure=True,
            listen="127.0.0.1:0",
            **{"poll_seconds": 0.3, **settings},
        )
        self.store = Store(directory / "state")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.coordinator, self._server, port = self._call(self._start())
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=server_options(self.settings.max_message_bytes)
        )
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _start(self) -> tuple[Coordinator, grpc.aio.Server, int]:
        tokens = TokenBook.load(self.settings.tokens)
        coordinator = Coordinator(self.settings, tokens, self.store, self.loop)
        server = grpc.aio.server(
            options=server_options(self.settings.max_message_bytes)
        )
        pb_grpc.add_CoordinatorServicer_to_server(coordinator, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return coordinator, server, port

    def metadata(self, client: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[client]}"),)

    def open_round(
        self, cohort: tuple[str, ...], target: int = 1, round: int = 0
    ) -> OpenRound:
        opened = self.coordinator.dispatch(
            TaskSpec("fedavg/local_training", {"model": "t"}),
            TEMPLATE,
            cohort,
            round=round,
            seeds={client: 7 for client in cohort},
            target=target,
        )
        self._call(asyncio.sleep(0))  # let the loop publish it
        return opened

    def get_task(self, client: str) -> list[pb.TaskMessage]:
        return list(self.stub.GetTask(pb.TaskRequest(), metadata=self.metadata(client)))

    def alive(self, client: str = "client-0") -> bool:
        reply = self.stub.Heartbeat(
            pb.HeartbeatRequest(task_id=""), metadata=self.metadata(client), timeout=10
        )
        return isinstance(reply, pb.HeartbeatReply)

    def close(self) -> None:
        self.channel.close()
        self._call(self._server.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()  # else its self-pipe sockets warn when collected
        self.store.close()


def result_messages(
    task_id: str,
    update: dict[str, torch.Tensor],
    weight: float = 3.0,
    metrics: str = '{"train_loss": 0.5}',
) -> Iterator[pb.ResultMessage]:
    """A well-formed result stream."""
    header = pb.ResultHeader(task_id=task_id, weight=weight, metrics_json=metrics)
    yield pb.ResultMessage(header=header)
    for chunk in tensor_chunks(update, 8):
        yield pb.ResultMessage(chunk=chunk)
