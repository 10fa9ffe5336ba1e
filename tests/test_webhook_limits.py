"""What anyone can make billsync hold through the webhook route, which takes no token: over
real HTTP, a malformed ``Stripe-Signature`` or a declared length over the webhook's own cap is
refused before the body is read, a body sent without a length is cut off at the cap, and only
so many deliveries are read at once (the rest: 503 with Retry-After, which Stripe retries).
Then what a correctly signed body can hold: text PostgreSQL refuses (NUL), nesting or numbers
the stores cannot keep — each a 400 on both stores alike, never a 500."""

from __future__ import annotations

import http.client
import json
import select
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from billsync.bootstrap import build
from billsync.catalog_file import load_catalog
from billsync.clock import ManualClock
from billsync.config import EXAMPLE_CATALOG, Settings
from billsync.core.webhook_signature import compute
from billsync.db.database import Database
from billsync.repositories import webhooks
from tests.conftest import T0, TEST_TOKEN
from tests.served import serve
from tests.waiting import BACKSTOP_SECONDS, wait_until

SECRET = "whsec_limits_0123456789abcdef"
NOW = int(T0.timestamp())
PATH = "/v1/stripe/webhook"
MAX_CONCURRENT = 2
A_SIGNATURE = "0" * 64  # the right shape; matches nothing


def served_webhook(tmp_path: Path, database: Database) -> Iterator[str]:
    settings = Settings(
        data_dir=tmp_path, api_token=TEST_TOKEN, stripe_webhook_secrets=SECRET,
        webhook_max_concurrent=MAX_CONCURRENT,
    )  # fmt: skip
    catalog = load_catalog(EXAMPLE_CATALOG)
    billsync = build(settings, clock=ManualClock(T0), database=database, catalog=catalog)
    with serve(billsync) as base_url:
        yield base_url
    billsync.close()


@pytest.fixture
def webhook_url(tmp_path: Path, database: Database) -> Iterator[str]:
    """billsync on each store, over HTTP."""
    yield from served_webhook(tmp_path, database)


@pytest.fixture
def sqlite_webhook_url(tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """billsync on SQLite only, over HTTP: for what happens before the store is reached."""
    shutil.copy(sqlite_template, tmp_path / "billsync.db")
    database = Database(f"sqlite:///{tmp_path / 'billsync.db'}")
    yield from served_webhook(tmp_path, database)
    database.dispose()


def signed(body: bytes, stamp: int = NOW) -> str:
    return f"t={stamp},v1={compute(body, SECRET, stamp)}"


def start_request(
    base_url: str, headers: dict[str, str], length: int, first: bytes
) -> socket.socket:
    """A webhook request whose headers and first body bytes are sent; the rest never is (unless
    the test sends it): billsync can answer only if it does not wait for the whole body."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=BACKSTOP_SECONDS)
    head = f"POST {PATH} HTTP/1.1\r\nHost: billsync\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {length}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(head.encode() + b"\r\n" + first)  # non-ASCII header bytes stay as UTF-8
    return sock


def send_chunked(base_url: str, headers: dict[str, str], chunks: Iterator[bytes]) -> bytes:
    """A body in chunks with no declared length, sent until billsync answers (or it ends);
    returns the answer's first bytes."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=BACKSTOP_SECONDS) as sock:
        head = f"POST {PATH} HTTP/1.1\r\nHost: billsync\r\nTransfer-Encoding: chunked\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(head.encode() + b"\r\n")
        try:
            for chunk in chunks:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the end
            else:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # billsync answered and closed while we were still sending
        return sock.recv(4096)


def answer_of(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = json.loads(response.read())
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


# --- before the body is read -----------------------------------------------------------------

MALFORMED_HEADERS = {
    "timestamp a superscript": f"t=²,v1={A_SIGNATURE}",
    "no header": None,
    "not a signature": "nonsense",
    "v1 too short": f"t={NOW},v1=00",
    "v1 not hex": f"t={NOW},v1={'g' * 64}",
    "no v1": f"t={NOW},v0={A_SIGNATURE}",
    "no timestamp": f"v1={A_SIGNATURE}",
    "two timestamps": f"t={NOW},t={NOW},v1={A_SIGNATURE}",
    "timestamp in other digits": f"t=١٧٦٣٢٠٨٠٠٠,v1={A_SIGNATURE}",
    "timestamp of 5,000 digits": f"t={'9' * 5000},v1={A_SIGNATURE}",
    "v1 non-ASCII": f"t={NOW},v1={'é' * 64}",
}


@pytest.mark.parametrize("header", MALFORMED_HEADERS.values(), ids=MALFORMED_HEADERS.keys())
def test_a_malformed_signature_header_is_refused_before_the_body_is_read(
    sqlite_webhook_url: str, header: str | None
) -> None:
    headers = {} if header is None else {"Stripe-Signature": header}
    # 16 MB declared, 10 bytes sent: an answer now means the body was not waited for.
    with start_request(sqlite_webhook_url, headers, 16 * 1024 * 1024, b'{"id": "ev') as sock:
        status, _, body = answer_of(sock)
    assert (status, body["error"]["code"]) == (400, "invalid_signature"), body
    # With the whole body sent, the same 400 (not a 500 from reading the header's numbers).
    event = b'{"id": "evt_x"}'
    with start_request(sqlite_webhook_url, headers, len(event), event) as sock:
        status, _, body = answer_of(sock)
    assert (status, body["error"]["code"]) == (400, "invalid_signature"), body


def test_a_declared_length_over_the_webhook_cap_is_refused_before_the_body_is_read(
    sqlite_webhook_url: str,
) -> None:
    """The webhook's cap (1 MB by default) is its own, far under the API's 16 MB."""
    assert Settings().webhook_max_body_bytes == 1024 * 1024
    header = {"Stripe-Signature": f"t={NOW},v1={A_SIGNATURE}"}
    with start_request(sqlite_webhook_url, header, 1024 * 1024 + 1, b"{") as sock:
        status, _, body = answer_of(sock)
    assert (status, body["error"]["code"]) == (413, "body_too_large"), body


def test_a_body_sent_without_a_length_is_cut_off_at_the_cap(sqlite_webhook_url: str) -> None:
    def two_megabytes() -> Iterator[bytes]:
        yield b"{"
        for _ in range(32):
            yield b" " * 65536

    header = {"Stripe-Signature": f"t={NOW},v1={A_SIGNATURE}"}
    answer = send_chunked(sqlite_webhook_url, header, two_megabytes())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer


def test_other_methods_are_answered_405_as_before(sqlite_webhook_url: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        answer = httpx.request(method, f"{sqlite_webhook_url}{PATH}", content=b"{}")
        assert answer.status_code == 405, (method, answer.text)


# --- at most so many at once -----------------------------------------------------------------


def test_at_most_the_configured_number_of_deliveries_are_read_at_once(
    sqlite_webhook_url: str,
) -> None:
    """Six slow senders: two are let in and wait for their bodies; the other four are answered
    503 with Retry-After at once. A delivery finished frees its place for the next one."""
    body = json.dumps(
        {"id": "evt_limits1", "object": "event", "type": "invoice.paid", "created": NOW,
         "livemode": False, "data": {"object": {"id": "in_limits1"}}}
    ).encode()  # fmt: skip
    url = sqlite_webhook_url
    wrong = {"Stripe-Signature": f"t={NOW},v1={A_SIGNATURE}"}
    senders = [start_request(url, wrong, len(body), body[:1]) for _ in range(6)]
    try:
        answered: list[socket.socket] = []
        while len(answered) < 4:
            readable, _, _ = select.select(
                [s for s in senders if s not in answered], [], [], BACKSTOP_SECONDS
            )
            assert readable, f"only {len(answered)} of the 4 extra senders were answered"
            answered.extend(readable)
        held = [s for s in senders if s not in answered]
        assert len(held) == MAX_CONCURRENT
        for sock in answered:
            status, headers, refusal = answer_of(sock)
            assert (status, refusal["error"]["code"]) == (503, "busy"), refusal
            assert headers["retry-after"] == "1"
        # The two let in are still waiting for their bodies (they cannot have been answered).
        assert select.select(held, [], [], 0.2)[0] == []
        with start_request(url, wrong, len(body), body) as another:
            assert answer_of(another)[0] == 503  # still full
        held[0].sendall(body[1:])
        status, _, refusal = answer_of(held[0])  # read whole, then verified
        assert (status, refusal["error"]["code"]) == (400, "invalid_signature")

        def deliver() -> dict[str, Any] | None:
            with start_request(url, {"Stripe-Signature": signed(body)}, len(body), body) as ok:
                status, _, receipt = answer_of(ok)
            return None if status == 503 else {"status": status, **receipt}

        # The place is given back as the answer goes out: a moment later at most.
        assert wait_until(deliver, "a place is free again")["status"] == 200
    finally:
        for sock in senders:
            sock.close()


# --- what a signed body can hold -------------------------------------------------------------


def an_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "evt_signed1", "object": "event", "type": "invoice.paid", "created": NOW,
        "livemode": False, "data": {"object": {"id": "in_signed1", "object": "invoice"}},
    }  # fmt: skip
    event.update(changes)
    return event


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


SIGNED_BUT_UNSTORABLE: dict[str, bytes] = {
    "NUL in a value": json.dumps(
        an_event(data={"object": {"id": "in_signed1", "description": "a\u0000b"}})
    ).encode(),
    "NUL in a key": json.dumps(
        an_event(data={"object": {"id": "in_signed1", "metadata": {"a\u0000b": "x"}}})
    ).encode(),
    "NUL in the id": json.dumps(an_event(id="evt_a\u0000b")).encode(),
    "NUL in the type": json.dumps(an_event(type="invoice.\u0000paid")).encode(),
    "nested 300 deep": json.dumps(
        an_event(data={"object": {"id": "in_signed1", "lines": nested(300)}})
    ).encode(),
    "created past 64 bits": json.dumps(an_event(created=2**64 - 1)).encode(),
    "created past year 9999": json.dumps(an_event(created=2**40)).encode(),
    "created negative": json.dumps(an_event(created=-1)).encode(),
    "created a boolean": json.dumps(an_event(created=True)).encode(),
    "created a float": json.dumps(an_event(created=1.5e9)).encode(),
    "livemode a string": json.dumps(an_event(livemode="false")).encode(),
    "id of 300 characters": json.dumps(an_event(id="evt_" + "a" * 296)).encode(),
    "type of 150 characters": json.dumps(an_event(type="invoice." + "a" * 142)).encode(),
    "id with a space": json.dumps(an_event(id="evt_a b")).encode(),
    "data not an object": json.dumps(an_event(data=[1, 2])).encode(),
    "not JSON": b'{"id": "evt_signed1",',
    "not UTF-8": b'{"id": "\xff"}',
    "a number too large for a double": b'{"id": "evt_signed1", "created": 1e400}',
    "empty": b"",
}


@pytest.mark.parametrize("body", SIGNED_BUT_UNSTORABLE.values(), ids=SIGNED_BUT_UNSTORABLE.keys())
def test_a_signed_body_the_stores_cannot_keep_is_a_400_on_both_stores(
    webhook_url: str, database: Database, body: bytes
) -> None:
    answer = httpx.post(
        f"{webhook_url}{PATH}", content=body, headers={"Stripe-Signature": signed(body)}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_payload"
    with database.read() as connection:
        assert webhooks.counts(connection)["received"] == 0


def test_a_signed_event_of_ordinary_text_is_stored(webhook_url: str, database: Database) -> None:
    """Line breaks, tabs, bidi marks and 64-bit amounts are Stripe's to send: kept as sent."""
    body = json.dumps(
        an_event(data={"object": {"id": "in_signed1", "description": "a\nb\tc \u202e d",
                                  "total": 2**63 - 1, "lines": nested(20)}})
    ).encode()  # fmt: skip
    answer = httpx.post(
        f"{webhook_url}{PATH}", content=body, headers={"Stripe-Signature": signed(body)}
    )
    assert answer.status_code == 200, answer.text
    with database.read() as connection:
        stored = webhooks.pending_events(connection, T0, 10)
    assert [event.id for event in stored] == ["evt_signed1"]
    assert stored[0].payload["data"]["object"]["description"] == "a\nb\tc \u202e d"
