"""The one door to NATS JetStream: a durable pull consumer, pulled in batches, settled per message.

billsync reads usage from a stream through a durable pull consumer with explicit acks. A
message is acked only once what it carries is committed, so a consumer that dies mid-batch
loses nothing (JetStream redelivers it after ``ack_wait``), and several processes can share one
durable consumer: each pull hands out different messages.

Pulls are made here rather than with nats-py's ``PullSubscription.fetch``, which waits for each
message with an ``asyncio`` task of its own: about 60 µs a message, a ceiling of ~16,000
messages/s before billsync does any work. Here one subscription to a private inbox appends
every delivery to a buffer from its callback (a few µs a message), and each pull request names
its own reply subject, so that the server's end-of-request status (``404 No Messages``, ``408
Request Timeout``, ``409 ...``) is matched to the request it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

log = logging.getLogger("billsync.jetstream")

# How long past its own expiry a pull request may stay unanswered (a connection lost and
# re-established in between) before it is given up.
REQUEST_MARGIN_SECONDS = 5.0
FLUSH_TIMEOUT_SECONDS = 10
STREAM_NOT_FOUND = 10059  # JetStream's error code for a missing stream
# Deliveries waiting in the client's subscription queue: far above one batch, so that the
# server never sees billsync as a slow consumer.
PENDING_MESSAGES_LIMIT = 1_000_000
PENDING_BYTES_LIMIT = 512 * 1024 * 1024


class JetStreamError(Exception):
    """JetStream cannot serve this consumer (no stream, a consumer billsync cannot use, the
    consumer deleted under it): retrying the same call would not help."""


class Delivery(Protocol):
    """A message JetStream delivered: its body; settle it through the source."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """The durable consumer billsync reads through. ``ack_wait`` and ``max_ack_pending`` are
    used when billsync creates it; an existing consumer keeps its own."""

    stream: str
    durable: str = "billsync"
    subject: str | None = None
    ack_wait: float = 30.0
    max_ack_pending: int = 50_000


@dataclass(frozen=True, slots=True)
class ConsumerState:
    pending: int  # in the stream, not yet delivered to the consumer
    ack_pending: int  # delivered, neither acked nor terminated yet
    redelivered: int  # delivered more than once and still outstanding
    acked_through: int  # stream sequence up to which every message is acked


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    stream_sequence: int
    subject: str
    deliveries: int  # 1 the first time; more when redelivered
    pending: int  # messages of the stream still to deliver to the consumer after this one


class _Pull:
    """One pull request in flight: how many messages it asked for, how many came."""

    __slots__ = ("done", "error", "received", "subject", "wanted")

    def __init__(self, subject: str, wanted: int) -> None:
        self.subject = subject
        self.wanted = wanted
        self.received = 0
        self.done = asyncio.Event()
        self.error: str | None = None


class JetStreamSource:
    """Connects to NATS, makes sure the durable consumer exists, pulls and settles messages."""

    def __init__(self, url: str, spec: ConsumerSpec, *, name: str = "billsync consume") -> None:
        self.url = url
        self.spec = spec
        self.name = name
        self.ack_wait = spec.ack_wait
        self.max_ack_pending = spec.max_ack_pending
        self._nc: Client | None = None
        self._closing = False
        self._subscription: Subscription | None = None
        self._inbox = ""
        self._requests = 0
        self._pull: _Pull | None = None
        self._buffer: list[Msg] = []
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"

    @property
    def client(self) -> Client:
        if self._nc is None:
            raise JetStreamError("not connected to NATS")
        return self._nc

    async def connect(self, wait_seconds: float = 60.0) -> None:
        """Connect (waiting up to ``wait_seconds`` for the server, as a starting process waits
        for its database), then make sure the consumer exists and suits billsync. Once
        connected, the client reconnects on its own for as long as it takes."""
        self._nc = await self._connect(wait_seconds)
        info = await self._ensure_consumer()
        self.ack_wait = info.config.ack_wait or self.spec.ack_wait
        self.max_ack_pending = info.config.max_ack_pending or self.spec.max_ack_pending
        self._inbox = self.client.new_inbox()
        self._subscription = await self.client.subscribe(
            f"{self._inbox}.*",
            cb=self._on_message,
            pending_msgs_limit=PENDING_MESSAGES_LIMIT,
            pending_bytes_limit=PENDING_BYTES_LIMIT,
        )

    async def _connect(self, wait_seconds: float) -> Client:
        last_error: list[str] = []

        async def on_error(error: Exception) -> None:
            if not last_error:
                log.warning(
                    "jetstream.connect.waiting", extra={"url": self.url, "error": str(error)}
                )
            last_error[:] = [str(error) or type(error).__name__]

        async def on_disconnected() -> None:
            if self._nc is not None and not self._closing:
                log.warning("jetstream.disconnected", extra={"url": self.url})
            if self._pull is not None:  # its answer is lost with the connection: pull again
                self._pull.done.set()

        async def on_reconnected() -> None:
            log.warning("jetstream.reconnected", extra={"url": self.url})

        client = Client()
        try:
            await asyncio.wait_for(
                client.connect(
                    self.url,
                    name=self.name,
                    connect_timeout=2,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                ),
                timeout=wait_seconds,
            )
        except (TimeoutError, OSError, nats.errors.Error) as error:
            await client.close()
            reason = last_error[0] if last_error else str(error) or "no answer"
            raise JetStreamError(
                f"cannot reach NATS at {self.url} (waited {wait_seconds:g} s): {reason}"
            ) from None
        return client

    def _consumer_config(self) -> ConsumerConfig:
        spec = self.spec
        return ConsumerConfig(
            name=spec.durable,
            durable_name=spec.durable,
            description="billsync: usage events into the ledger",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait,
            # Never give up on a message: usage must reach the ledger or a rejects file.
            max_deliver=-1,
            max_ack_pending=spec.max_ack_pending,
            filter_subject=spec.subject,
        )

    async def _ensure_consumer(self) -> ConsumerInfo:
        spec = self.spec
        jetstream = self.client.jetstream()
        try:
            info: ConsumerInfo = await jetstream.consumer_info(spec.stream, spec.durable)
        except nats.js.errors.NotFoundError as error:
            if error.err_code == STREAM_NOT_FOUND:
                raise JetStreamError(f"stream {spec.stream!r} does not exist") from None
            try:
                info = await jetstream.add_consumer(spec.stream, self._consumer_config())
                log.info("jetstream.consumer.created", extra={"consumer": spec.durable})
            except nats.js.errors.BadRequestError:
                # Another process created it at the same moment: use theirs.
                info = await jetstream.consumer_info(spec.stream, spec.durable)
        except nats.errors.NoRespondersError:
            raise JetStreamError(f"JetStream is not enabled on {self.url}") from None
        self._check(info.config)
        return info

    async def _still_there(self) -> None:
        """JetStream ignores pulls on a consumer that no longer exists: say so rather than
        pull forever (and never re-create it, which would deliver the whole stream again)."""
        try:
            await self.client.jetstream().consumer_info(self.spec.stream, self.spec.durable)
        except nats.js.errors.NotFoundError as error:
            raise JetStreamError(
                f"consumer {self.spec.durable!r} on stream {self.spec.stream!r}: "
                f"{error.description or 'not found'}"
            ) from None
        except (TimeoutError, nats.errors.Error):
            pass  # NATS itself is unreachable: the client is reconnecting

    def _check(self, config: ConsumerConfig) -> None:
        durable = self.spec.durable
        if config.deliver_subject:
            raise JetStreamError(f"consumer {durable!r} is a push consumer; billsync pulls")
        if config.ack_policy != AckPolicy.EXPLICIT:
            raise JetStreamError(
                f"consumer {durable!r} acks with policy {config.ack_policy}: billsync acks "
                "each message after its commit and needs the explicit policy"
            )
        if self.spec.subject and config.filter_subject != self.spec.subject:
            raise JetStreamError(
                f"consumer {durable!r} filters {config.filter_subject or 'every subject'!r}, "
                f"not {self.spec.subject!r}: use another --durable, or delete that consumer"
            )

    async def _on_message(self, msg: Msg) -> None:
        if msg.reply:  # a delivery: JetStream gives each its ack subject
            self._buffer.append(msg)
            pull = self._pull
            if pull is not None:
                pull.received += 1
                if pull.received >= pull.wanted:
                    pull.done.set()
            return
        pull = self._pull
        if pull is None or msg.subject != pull.subject:
            return  # the end of an earlier request given up on
        status = (msg.headers or {}).get("Status")
        if status == "100":  # idle heartbeat
            return
        if status == "409":
            description = (msg.headers or {}).get("Description", "")
            if "Deleted" in description or "push" in description:
                pull.error = f"consumer {self.spec.durable!r}: {description}"
            else:
                log.warning("jetstream.pull.conflict", extra={"description": description})
        elif status == "503":
            pull.error = "JetStream did not answer the pull (no responders)"
        pull.done.set()  # 404 No Messages, 408 Request Timeout, 409, 503

    async def _request(self, wanted: int, wait: float, *, no_wait: bool) -> None:
        self._requests += 1
        pull = _Pull(f"{self._inbox}.{self._requests}", wanted)
        body = {"batch": wanted, "no_wait": True} if no_wait else {"batch": wanted}
        if not no_wait:
            body["expires"] = int(wait * 1_000_000_000)
        self._pull = pull
        try:
            await self.client.publish(self._next_subject, orjson.dumps(body), reply=pull.subject)
            await asyncio.wait_for(pull.done.wait(), timeout=wait + REQUEST_MARGIN_SECONDS)
        except nats.errors.Error as error:
            raise JetStreamError(f"could not pull: {error}") from error
        except TimeoutError:
            log.warning("jetstream.pull.unanswered", extra={"stream": self.spec.stream})
            await self._still_there()
        finally:
            self._pull = None
        if pull.error is not None:
            raise JetStreamError(pull.error)

    async def pull(self, limit: int, wait: float) -> list[Delivery]:
        """Up to ``limit`` messages: those available at once, or else the first to arrive
        within ``wait`` seconds and whatever is available with it. Empty when none came."""
        if len(self._buffer) < limit:
            await self._request(limit - len(self._buffer), wait, no_wait=True)
        if not self._buffer:
            await self._request(1, wait, no_wait=False)
            if self._buffer and len(self._buffer) < limit:
                await self._request(limit - len(self._buffer), wait, no_wait=True)
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return cast(list[Delivery], taken)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Done with: JetStream drops them for good."""
        try:
            for msg in _messages(deliveries):
                await msg.ack()
        except nats.errors.Error as error:
            raise JetStreamError(f"could not ack: {error}") from error
        await self._flush()

    async def term(self, deliveries: Sequence[Delivery]) -> None:
        """Never to be delivered again, though not processed (a body that is not JSON)."""
        try:
            for msg in _messages(deliveries):
                await msg.term()
        except nats.errors.Error as error:
            raise JetStreamError(f"could not terminate: {error}") from error
        await self._flush()

    async def nak(self, deliveries: Sequence[Delivery], delay: float | None = None) -> None:
        """Handed back: delivered again (to this process or another) after ``delay`` seconds."""
        try:
            for msg in _messages(deliveries):
                await msg.nak(delay)
        except nats.errors.Error as error:
            raise JetStreamError(f"could not hand back: {error}") from error
        await self._flush()

    async def in_progress(self, deliveries: Sequence[Delivery]) -> None:
        """Still being worked on: restarts their ``ack_wait``, so they are not redelivered."""
        try:
            for msg in _messages(deliveries):
                await msg.in_progress()
        except nats.errors.Error as error:
            raise JetStreamError(f"could not extend the ack wait: {error}") from error
        await self._flush()

    async def _flush(self) -> None:
        """Wait until the server has read what was sent (acks are otherwise fire-and-forget).
        While disconnected, the client keeps them and sends them once reconnected."""
        try:
            await self.client.flush(timeout=FLUSH_TIMEOUT_SECONDS)
        except (TimeoutError, nats.errors.Error) as error:
            log.warning(
                "jetstream.flush.failed", extra={"error": str(error) or type(error).__name__}
            )

    @staticmethod
    def describe(delivery: Delivery) -> DeliveryInfo:
        msg = cast(Msg, delivery)
        metadata = msg.metadata
        return DeliveryInfo(
            stream_sequence=metadata.sequence.stream,
            subject=msg.subject,
            deliveries=metadata.num_delivered,
            pending=metadata.num_pending,
        )

    async def state(self) -> ConsumerState:
        try:
            info = await self.client.jetstream().consumer_info(self.spec.stream, self.spec.durable)
        except (TimeoutError, nats.errors.Error) as error:
            raise JetStreamError(f"could not read the consumer's state: {error}") from error
        return ConsumerState(
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            redelivered=info.num_redelivered or 0,
            acked_through=(info.ack_floor.stream_seq or 0) if info.ack_floor else 0,
        )

    async def close(self) -> None:
        """Stop receiving, hand back any message received but not taken, and close once
        everything sent (acks included) has reached the server."""
        if self._nc is None:
            return
        self._closing = True
        if self._subscription is not None and not self._nc.is_closed:
            await self._subscription.unsubscribe()
            self._subscription = None
        leftovers, self._buffer = self._buffer, []
        if leftovers and not self._nc.is_closed:
            await self.nak(cast(list[Delivery], leftovers))
        if not self._nc.is_closed:
            await self._nc.drain()
        self._nc = None


def _messages(deliveries: Sequence[Delivery]) -> Sequence[Msg]:
    return cast(Sequence[Msg], deliveries)
