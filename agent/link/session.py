"""The agent's outbound session: register, open the task stream, heartbeat, run tasks, repeat.

The agent always dials out (docs/protocol.md, "Connection"). One connection is: a signed
``Register``; a signed ``OpenTasks`` whose server stream delivers tasks, run one at a time by
``TaskRunner``; and a heartbeat thread sending signed ``Heartbeat``s every
``heartbeat_interval_s``. When anything fails, the connection is dropped and re-made after an
exponential backoff with full jitter (``agent.link.backoff``: base 0.5 s, factor 2, cap 30 s),
reset after each successful ``Register``, except when the aggregator ended the connection
for want of capacity: ``server_busy`` (its shared capacity is taken, nobody's fault) or
``peer_limit`` (this site is over its own quota) say "retry later", so the delay keeps
growing although the ``Register`` before went through; a busy aggregator is not hammered by
every site twice a second. The randomness and the sleep are parameters (STYLE rule 3), so
tests check the delays without sleeping. A connection that cannot be made because the site's
certificate has expired (``connect`` raises ``CertificateExpired``) is tried again on the same
backoff without a ``disconnected`` line each time: the daemon says it once
(``certificate_expired``), and a reload with a renewed certificate lets the next try through.

``stop()`` (SIGTERM) makes the current task stop at its next step, stops every worker, closes
the connection (cancelling a download or an upload in flight, so a stalled aggregator cannot
hold the task, and with it the shutdown, for ever) and ends ``run()``. The interrupted task
is dropped: its report cannot go out on the closed connection, and the aggregator sees the
task stream end.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from google.protobuf.message import Message

from agent.link.backoff import Backoff
from agent.link.transport import TaskStream, Transport
from agent.tasks.runner import TaskOutcome, TaskRunner
from confide.errors import ConfideError, Reason
from confide.pki import CertificateExpired
from confide.v1 import common_pb2, federation_pb2
from confide.wire import seal

__all__ = ["AGENT_VERSION", "Backoff", "Session", "SessionStatus"]

AGENT_VERSION = "0.1.0"
DEFAULT_HEARTBEAT_S = 10.0
_MIN_HEARTBEAT_S = 0.05

log = structlog.get_logger("confide.agent")

_RETRY_LATER = frozenset({Reason.SERVER_BUSY, Reason.PEER_LIMIT})
"""Reasons the aggregator gives when it has no room for this site now: back off further."""


@dataclass(frozen=True)
class SessionStatus:
    """A snapshot of the session for the local API.

    Args:
        site_id: the identity the aggregator saw ("" before the first register).
        connected: whether the task stream is open now.
        current_task: ``KIND task_id`` of the running task, or "".
        tasks_done: tasks answered OK since start.
        tasks_failed: tasks answered FAILED or REFUSED since start.
        started_at: unix seconds when the session was created.
    """

    site_id: str
    connected: bool
    current_task: str
    tasks_done: int
    tasks_failed: int
    started_at: float


class Session:
    """One agent's long-lived relationship with the aggregator.

    Args:
        runner: executes tasks and signs as the site.
        connect: makes a fresh transport for each connection attempt.
        datasets: dataset names the site exposes (sent at register).
        unusable: declared datasets the self-check refused, with why (sent at register).
        instance: this agent process's id, sent at register and stream open (default: 64
            random bits), so the aggregator can refuse a second agent with this identity.
        device: the training device as resolved (sent at register).
        resources: samples the daemon's resources for heartbeats.
        rng: uniform [0, 1) numbers for the backoff jitter.
        sleep: waits the backoff delay; None waits on the stop event (so ``stop`` wakes it).
        clock: unix seconds, for signing.
        on_connection: called with True/False when the task stream opens/closes.
        dataset_sizes: counts each dataset's records, declared at every register (the
            aggregator refuses an update or evaluation claiming more).
    """

    def __init__(
        self,
        *,
        runner: TaskRunner,
        connect: Callable[[], Transport],
        datasets: list[str],
        device: str,
        resources: Callable[[], federation_pb2.Resources],
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.time,
        on_connection: Callable[[bool], None] | None = None,
        dataset_sizes: Callable[[], list[federation_pb2.DatasetSize]] | None = None,
        unusable: Sequence[federation_pb2.DatasetProblem] = (),
        instance: str | None = None,
    ) -> None:
        self._runner = runner
        self._instance = instance if instance is not None else secrets.token_hex(8)
        self._unusable = list(unusable)
        self._connect = connect
        self._datasets = list(datasets)
        self._dataset_sizes = dataset_sizes
        self._device = device
        self._resources = resources
        self._clock = clock
        self._stopping = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopping.wait
        self._on_connection = on_connection
        self.backoff = Backoff(rng)
        self._registered = False  # this connection's Register went through (run's thread)
        self._lock = threading.Lock()
        self._stream: TaskStream | None = None
        self._transport: Transport | None = None
        self._site_id = ""
        self._connected = False
        self._current = ""
        self._done = 0
        self._failed = 0
        self._started_at = clock()

    # ----- control -----

    def run(self) -> None:
        """Serve until ``stop()``: connect, run tasks, and reconnect after every failure."""
        while not self._stopping.is_set():
            reason, detail = "stream_ended", ""
            self._registered = False
            busy = expired = False
            try:
                self._serve_once()
            except CertificateExpired as exc:
                # Not dialled: the daemon's expiry reminder says so in one line (with the
                # date and the fix), so each attempt is not another line.
                reason, detail, expired = exc.reason.value, exc.message, True
            except ConfideError as exc:
                reason, detail = exc.reason.value, exc.message
                busy = exc.reason in _RETRY_LATER
                if exc.reason is Reason.IDENTITY_IN_USE:
                    log.error(
                        "identity_in_use",
                        site=self._runner.site.site,
                        error="another agent is connected with this site's identity (the "
                        "same certificate); stop one of them, or give each site its own",
                    )
            except Exception as exc:  # never let a bug end the daemon; log it and reconnect
                reason, detail = "internal", repr(exc)
                log.error("session_error", exc_info=True)
            finally:
                self._set_connected(False)
            if self._stopping.is_set():
                break
            if self._registered and not busy:
                self.backoff.reset()  # the aggregator took this site: start again from base
            delay = self.backoff.next_delay()
            if expired:
                log.debug("not_connecting", reason="certificate_expired", retry_in_s=delay)
            else:
                log.info("disconnected", reason=reason, error=detail, retry_in_s=round(delay, 3))
            self._sleep(delay)
        self._runner.stop_workers()
        log.info("session_stopped")

    def stop(self) -> None:
        """End the session: abandon the current task, stop workers, close the connection."""
        self._stopping.set()
        self._runner.abandon()
        with self._lock:
            stream, transport = self._stream, self._transport
        if stream is not None:
            stream.cancel()
        if transport is not None:
            transport.close()  # cancels calls in flight; they raise ``unavailable``

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping.is_set()

    def status(self) -> SessionStatus:
        """A consistent snapshot of the session's state."""
        with self._lock:
            return SessionStatus(
                site_id=self._site_id,
                connected=self._connected,
                current_task=self._current,
                tasks_done=self._done,
                tasks_failed=self._failed,
                started_at=self._started_at,
            )

    # ----- one connection -----

    def _serve_once(self) -> None:
        transport = self._connect()
        heartbeat_stop = threading.Event()
        beat: threading.Thread | None = None
        with self._lock:
            self._transport = transport
        try:
            if self._stopping.is_set():  # stop() ran before it could see this transport
                return
            reply = transport.register(
                self._signed(
                    common_pb2.STAGE_REGISTER,
                    federation_pb2.RegisterRequest(
                        agent_version=AGENT_VERSION,
                        datasets=self._datasets,
                        device=self._device,
                        dataset_sizes=self._dataset_sizes() if self._dataset_sizes else [],
                        unusable=self._unusable,
                        instance=self._instance,
                    ),
                )
            )
            self._registered = True
            stream = transport.open_tasks(
                self._signed(
                    common_pb2.STAGE_OPEN_TASKS,
                    federation_pb2.OpenTasksRequest(instance=self._instance),
                )
            )
            with self._lock:
                self._stream = stream
                self._site_id = reply.site_id
            if self._stopping.is_set():
                return
            self._set_connected(True)
            log.info(
                "connected", site=reply.site_id, heartbeat_interval_s=reply.heartbeat_interval_s
            )
            interval = max(reply.heartbeat_interval_s or DEFAULT_HEARTBEAT_S, _MIN_HEARTBEAT_S)
            beat = threading.Thread(
                target=self._heartbeats,
                args=(transport, stream, interval, heartbeat_stop),
                name="confide-heartbeat",
                daemon=True,
            )
            beat.start()
            for task in stream:
                if self._stopping.is_set():
                    break
                self._run_task(task, transport)
        finally:
            heartbeat_stop.set()
            with self._lock:
                stream_now, self._stream = self._stream, None
                self._transport = None
            if stream_now is not None:
                stream_now.cancel()
            if beat is not None:
                beat.join(timeout=5.0)
            transport.close()

    def _run_task(self, task: federation_pb2.Task, transport: Transport) -> None:
        with self._lock:
            self._current = f"{federation_pb2.TaskKind.Name(task.kind)} {task.task_id}"
        try:
            outcome = self._runner.run(task, transport)
        finally:
            with self._lock:
                self._current = ""
        with self._lock:
            if outcome is TaskOutcome.OK:
                self._done += 1
            else:
                self._failed += 1

    def _heartbeats(
        self, transport: Transport, stream: TaskStream, interval: float, done: threading.Event
    ) -> None:
        while not done.wait(interval):
            with self._lock:
                current = self._current
            try:
                transport.heartbeat(
                    self._signed(
                        common_pb2.STAGE_HEARTBEAT,
                        federation_pb2.Heartbeat(current_task=current, resources=self._resources()),
                    )
                )
            except ConfideError as exc:
                log.warning("heartbeat_failed", reason=exc.reason.value, error=exc.message)
                stream.cancel()  # the task loop sees the stream end and reconnects
                return
            except Exception:
                # A bug (in the resource probe, say) must not end the heartbeats silently while
                # the task stream stays open: log it and try again at the next interval.
                log.error("heartbeat_failed", reason=Reason.INTERNAL.value, exc_info=True)

    # ----- helpers -----

    def _signed(self, stage: int, payload: Message) -> common_pb2.Envelope:
        site = self._runner.site
        return seal(
            signing_key=site.signing_key,
            federation=site.federation,
            sender=site.site,
            stage=stage,
            payload=payload.SerializeToString(),
            now=self._clock(),
        )

    def _set_connected(self, value: bool) -> None:
        with self._lock:
            changed = self._connected != value
            self._connected = value
        if changed and self._on_connection is not None:
            self._on_connection(value)
