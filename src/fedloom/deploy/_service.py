"""The gRPC service the clients call, and the bookkeeping of who is connected.

Every call is authenticated (a known token, else ``UNAUTHENTICATED``) and rate
limited (``RESOURCE_EXHAUSTED``); every result is checked chunk by chunk against
the model it answers before the training thread sees it (``INVALID_ARGUMENT``).
The handlers run on the server's event loop; the training thread opens rounds
through :meth:`Coordinator.dispatch` and reads who is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import torch

from fedloom.learning import ClientResult, Params

from ._auth import AUTH_METADATA, RateLimiter, TokenBook, natural
from ._config import DeployConfig
from ._proto import deploy_pb2 as pb
from ._proto import deploy_pb2_grpc as pb_grpc
from ._round import OpenRound, TaskSpec
from ._store import Store
from ._wire import TensorAssembler, WireError, tensor_chunks

__all__ = ["Coordinator"]

logger = logging.getLogger("fedloom.deploy")

_MAX_METRICS = 64
_MAX_METRICS_JSON = 1 << 16


@dataclass
class _Session:
    last_seen: float  # time.monotonic()
    last_seen_wall: float
    calls: int = 0


def _metrics(text: str) -> dict[str, torch.Tensor]:
    if len(text) > _MAX_METRICS_JSON:
        raise WireError(f"metrics_json is over {_MAX_METRICS_JSON} characters")
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise WireError(f"metrics_json is not JSON: {error}") from None
    if not isinstance(data, dict) or len(data) > _MAX_METRICS:
        raise WireError(f"metrics_json must be an object of <= {_MAX_METRICS} numbers")
    metrics = {}
    for key, value in data.items():
        if (
            len(key) > 100
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise WireError(f"metric {key[:100]!r} must be a finite number")
        metrics[key] = torch.tensor(float(value), dtype=torch.float64)
    return metrics


def _weight(value: float) -> torch.Tensor:
    if not math.isfinite(value) or value < 0:
        raise WireError(f"weight must be finite and >= 0, got {value}")
    return torch.tensor(value, dtype=torch.float64)


class Coordinator(pb_grpc.CoordinatorServicer):
    """The server side of the wire protocol and the registry of live clients."""

    def __init__(
        self,
        settings: DeployConfig,
        tokens: TokenBook,
        store: Store,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.store = store
        self.loop = loop
        self.round: OpenRound | None = None
        self.finished = False
        self.rounds_done = 0
        self._sessions: dict[str, _Session] = {}
        self._changed = asyncio.Event()
        self._uploads = asyncio.Semaphore(settings.max_concurrent_uploads)
        self._limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self._results: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._told_finished: set[str] = set()

    # --- used by the training thread ----------------------------------------------

    def alive(self, client: str) -> bool:
        """Whether ``client`` is in a call now or was heard from recently."""
        session = self._sessions.get(client)
        if session is None:
            return False
        recent = time.monotonic() - session.last_seen < self.settings.client_timeout
        return session.calls > 0 or recent

    def connected(self) -> list[str]:
        """The clients alive now, sorted."""
        return sorted((c for c in list(self._sessions) if self.alive(c)), key=natural)

    def dispatch(
        self,
        spec: TaskSpec,
        params: Params,
        cohort: tuple[str, ...],
        *,
        round: int,
        seeds: Mapping[str, int],
        target: int,
    ) -> OpenRound:
        """Open a round: the task for ``cohort`` becomes visible to its clients."""
        chunks = list(tensor_chunks(params, self.settings.chunk_bytes))
        open_round = OpenRound(
            round=round,
            task_id=f"{round}-{secrets.token_hex(8)}",
            spec=spec,
            template={k: v.detach() for k, v in params.items()},
            chunks=chunks,
            cohort=cohort,
            seeds=seeds,
            target=target,
            deadline=time.monotonic() + self.settings.round_deadline,
            alive=self.alive,
            heartbeat_seconds=self.settings.heartbeat_seconds,
        )
        self.loop.call_soon_threadsafe(self._publish, open_round)
        return open_round

    def round_done(self, rounds_done: int) -> None:
        """The training thread finished a round (or gave it up)."""
        self.loop.call_soon_threadsafe(self._publish, None, rounds_done)

    def finish(self) -> None:
        """The run is over: every client polling is told so."""
        self.loop.call_soon_threadsafe(self._finish)

    async def wait_told_finished(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every live client has heard the run
        is over, so that none keeps calling a server that has gone."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if set(self.connected()) <= self._told_finished:
                return
            await asyncio.sleep(0.05)

    # --- loop side ----------------------------------------------------------------

    def _publish(self, open_round: OpenRound | None, rounds_done: int = -1) -> None:
        if self.round is not None and self.round is not open_round:
            self.round.close()
        self.round = open_round
        if rounds_done >= 0:
            self.rounds_done = rounds_done
        self._wake()

    def _finish(self) -> None:
        self.finished = True
        if self.round is not None:
            self.round.close()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _seen(self, client: str) -> _Session:
        now = time.monotonic()
        session = self._sessions.get(client)
        if session is None:
            session = self._sessions[client] = _Session(now, time.time())
            logger.info("client %s connected", client)
        session.last_seen, session.last_seen_wall = now, time.time()
        self._dirty.add(client)
        return session

    async def _admit(self, context: grpc.aio.ServicerContext) -> str:
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get(AUTH_METADATA, "")
        if not isinstance(value, str) or not value.startswith("Bearer "):
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "no client token: send metadata 'authorization: Bearer <token>'",
            )
        client = self.tokens.identify(value.removeprefix("Bearer "))
        if client is None:
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown client token: this server does not know this client",
            )
        if not self._limiter.allow(client):
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit: at most {self.settings.rate_limit:g} calls a second",
            )
        return client

    async def GetTask(
        self, request: pb.TaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TaskMessage]:
        client = await self._admit(context)
        session = self._seen(client)
        session.calls += 1
        try:
            end = time.monotonic() + self.settings.poll_seconds
            while True:
                if self.finished:
                    self._told_finished.add(client)
                    yield pb.TaskMessage(header=pb.TaskHeader(finished=True))
                    return
                open_round = self.round
                if open_round is not None and open_round.waiting_for(client):
                    left = open_round.deadline - time.monotonic()
                    yield pb.TaskMessage(header=open_round.header(client, left))
                    for chunk in open_round.chunks:
                        yield pb.TaskMessage(chunk=chunk)
                    open_round.bytes_down += sum(len(c.data) for c in open_round.chunks)
                    return
                remaining = end - time.monotonic()
                if remaining <= 0:
                    yield pb.TaskMessage(header=pb.TaskHeader())
                    return
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            session.calls -= 1
            self._seen(client)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatReply:
        client = await self._admit(context)
        self._seen(client)
        open_round = self.round
        task_open = (
            open_round is not None
            and open_round.task_id == request.task_id
            and open_round.waiting_for(client)
        )
        return pb.HeartbeatReply(task_open=task_open)

    async def SubmitResult(
        self,
        request_iterator: AsyncIterator[pb.ResultMessage],
        context: grpc.aio.ServicerContext,
    ) -> pb.SubmitReply:
        client = await self._admit(context)
        session = self._seen(client)
        session.calls += 1
        try:
            return await self._receive(client, request_iterator, context)
        finally:
            session.calls -= 1
            self._seen(client)

    async def _receive(
        self,
        client: str,
        messages: AsyncIterator[pb.ResultMessage],
        context: grpc.aio.ServicerContext,
    ) -> pb.SubmitReply:
        first = await anext(aiter(messages), None)
        if first is None or not first.HasField("header"):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "a result starts with its header, then the update's tensor chunks",
            )
        header = first.header
        open_round = self.round
        if (
            open_round is None
            or header.task_id != open_round.task_id
            or not open_round.waiting_for(client)
        ):
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no open task {header.task_id[:40]!r} for client {client} (the round "
                "closed, or its result was already received)",
            )
        try:
            weight, metrics = _weight(header.weight), _metrics(header.metrics_json)
        except WireError as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        async with self._uploads:
            assembler = TensorAssembler(open_round.template)
            try:
                async with asyncio.timeout(self.settings.client_timeout):
                    async for message in messages:
                        if not message.HasField("chunk"):
                            raise WireError("a result has one header, then chunks")
                        assembler.add(message.chunk)
                        self._seen(client)
                update = assembler.finish()
            except WireError as error:
                await _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"bad result: {error}"
                )
            except TimeoutError:
                await _abort(
                    context, grpc.StatusCode.DEADLINE_EXCEEDED, "upload took too long"
                )
            result = ClientResult(update, weight, metrics)
            verdict = open_round.offer(client, result, assembler.bytes_received)
            if verdict is None:
                return pb.SubmitReply(accepted=False, reason="the round closed")
            accepted, reason = await asyncio.wrap_future(verdict)
        if not accepted:
            logger.warning("rejected the result of %s: %s", client, reason)
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, reason)
        self._results[client] = self._results.get(client, 0) + 1
        return pb.SubmitReply(accepted=True)

    # --- status -------------------------------------------------------------------

    def live_status(self) -> dict[str, Any]:
        """What the server is doing now, for ``fedloom status``."""
        status: dict[str, Any] = {
            "updated": time.time(),
            "connected": self.connected(),
            "rounds_done": self.rounds_done,
            "finished": self.finished,
            "round": None,
        }
        open_round = self.round
        if open_round is not None and open_round.is_open:
            status["round"] = {
                "round": open_round.round + 1,
                "cohort": list(open_round.cohort),
                "reported": list(open_round.accepted),
                "waiting_for": sorted(open_round.pending),
                "deadline_in": round(open_round.deadline - time.monotonic(), 1),
            }
        return status

    async def flush(self) -> None:
        """Write the client registry and the live status to the store."""
        seen = {c: self._sessions[c].last_seen_wall for c in self._dirty}
        results, self._results, self._dirty = self._results, {}, set()
        status = self.live_status()
        await asyncio.to_thread(self.store.touch_clients, seen, results)
        await asyncio.to_thread(self.store.set, "live", status)

    async def flush_forever(self, period: float = 1.0) -> None:
        """:meth:`flush` every ``period`` seconds until cancelled."""
        while True:
            await self.flush()
            await asyncio.sleep(period)


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("unreachable")  # context.abort raises
