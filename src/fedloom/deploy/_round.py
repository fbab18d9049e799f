"""One open round: the task sent to a cohort, and the results streaming back.

The server's event loop (the gRPC handlers) offers results; the training thread
consumes them one at a time and folds each into the aggregate before it takes the
next. Both sides share this object, guarded by one lock. At most
``max_concurrent_uploads`` results wait in the queue, so memory stays O(model).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedloom.learning import ClientResult, Params

from ._proto import deploy_pb2 as pb

__all__ = ["OpenRound", "RoundFailed", "Submission", "TaskSpec"]

Verdict = tuple[bool, str]


class RoundFailed(RuntimeError):
    """A round that closed with fewer results than it needs; it is run again."""


@dataclass(frozen=True)
class TaskSpec:
    """What a client is asked to do: a registered client work and its JSON config."""

    client_work: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class Submission:
    """One client's result, waiting for the training thread's verdict."""

    client: str
    result: ClientResult
    verdict: concurrent.futures.Future[Verdict]


@dataclass(eq=False)
class OpenRound:
    """The state of one round between its dispatch and its close."""

    round: int
    task_id: str
    spec: TaskSpec
    template: Params
    chunks: list[pb.TensorChunk]
    cohort: tuple[str, ...]
    seeds: Mapping[str, int]
    target: int
    deadline: float
    alive: Callable[[str], bool]
    heartbeat_seconds: float = 2.0
    bytes_down: int = 0
    bytes_up: int = 0
    pending: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    is_open: bool = True
    _queue: queue.Queue[Submission | None] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.pending = set(self.cohort)

    def header(self, client: str, deadline_seconds: float) -> pb.TaskHeader:
        """The task header for one member of the cohort (its own seed)."""
        config = {
            **self.spec.config,
            "seed": self.seeds[client],
            "heartbeat_seconds": self.heartbeat_seconds,
        }
        return pb.TaskHeader(
            task_id=self.task_id,
            round=self.round,
            client_work=self.spec.client_work,
            config_json=json.dumps(config),
            num_chunks=len(self.chunks),
            deadline_seconds=deadline_seconds,
        )

    def waiting_for(self, client: str) -> bool:
        """Whether ``client`` is in the cohort and has not sent its result."""
        with self._lock:
            return self.is_open and client in self.pending

    def offer(
        self, client: str, result: ClientResult, nbytes: int
    ) -> concurrent.futures.Future[Verdict] | None:
        """Queue ``client``'s result; ``None`` if the round no longer wants it."""
        with self._lock:
            if not self.is_open or client not in self.pending:
                return None
            self.pending.discard(client)
            self.bytes_up += nbytes
            verdict: concurrent.futures.Future[Verdict] = concurrent.futures.Future()
            self._queue.put(Submission(client, result, verdict))
            return verdict

    def close(self) -> None:
        """Stop taking results; results still queued are answered "round closed"."""
        with self._lock:
            if not self.is_open:
                return
            self.is_open = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    _answer(item.verdict, (False, "the round closed"))
            self._queue.put(None)

    def settle(self, submission: Submission, error: str | None) -> None:
        """Record the training thread's verdict on a submission and answer it."""
        with self._lock:
            if error is None:
                self.accepted.append(submission.client)
            else:
                self.rejected[submission.client] = error
        _answer(submission.verdict, (error is None, error or ""))

    def _should_close(self) -> bool:
        with self._lock:
            if len(self.accepted) >= self.target:
                return True
            if not self._queue.empty():
                return False
            gone = all(not self.alive(client) for client in self.pending)
        return gone or time.monotonic() >= self.deadline

    def submissions(self) -> Iterator[Submission]:
        """Results in arrival order until the round closes: on reaching its target,
        at its deadline, or once every client still owing a result is gone.

        The caller must :meth:`settle` each before asking for the next.
        """
        while True:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._should_close():
                    self.close()
                continue
            if item is None:
                return
            yield item
            if self._should_close():
                self.close()


def _answer(verdict: concurrent.futures.Future[Verdict], value: Verdict) -> None:
    """Answer a submission, unless its client has gone: a call cancelled while
    its result waited (the connection dropped, the client gave up) cancels its
    verdict, which then takes no answer."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        verdict.set_result(value)
