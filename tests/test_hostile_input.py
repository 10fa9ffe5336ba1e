"""Text an attacker or a careless producer sends — NUL, control, line-separator and
bidi-override characters, lone surrogates, digits of other scripts, JSON nested too deeply or
not UTF-8 — on each store. PostgreSQL cannot store NUL where SQLite can: such input made one
store answer 500 (and drop the good events of the batch) and the other store it. Now both
refuse it alike: per event in a batch of usage (the other events still count), per request
elsewhere (a 4xx), never stored.

The per-event codes are in tests/test_api.py's table; JetStream in tests/test_stream_consume.py.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from sqlalchemy import select
from typer.testing import CliRunner

from billsync.bootstrap import Billsync
from billsync.cli.ingest_file import ingest_file
from billsync.cli.main import app as cli
from billsync.core.usage_messages import decode_message
from billsync.db.database import Database
from billsync.db.tables import accounts as accounts_table
from billsync.db.tables import usage_events
from tests.conftest import T0, TEST_TOKEN
from tests.factories import create_account, event, rfc3339

MACHINE = "machine.shared-cpu-1x.seconds"
EGRESS = "bandwidth.egress.na-eu.gb"
AN_HOUR_AGO = T0 - timedelta(hours=1)
DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than any decoder's recursion limit
JSON = {"Content-Type": "application/json"}


# The characters no text may carry, written out independently of billsync's own rule: C0 and
# C1 controls, line and paragraph separators, bidi embeddings, overrides, isolates, surrogates.
REFUSED_RANGES = ((0, 0x1F), (0x7F, 0x9F), (0x2028, 0x202E), (0x2066, 0x2069), (0xD800, 0xDFFF))
REFUSED = [chr(point) for start, end in REFUSED_RANGES for point in range(start, end + 1)]


def is_refused(character: str) -> bool:
    return any(start <= ord(character) <= end for start, end in REFUSED_RANGES)


def stored_text(database: Database) -> list[str]:
    """Every string the ledger holds of accounts and usage events."""
    with database.read() as connection:
        events = connection.execute(
            select(usage_events.c.id, usage_events.c.account_id, usage_events.c.dimensions)
        ).all()
        accounts = connection.execute(
            select(accounts_table.c.id, accounts_table.c.name, accounts_table.c.email)
        ).all()
    texts: list[str] = []
    for event_id, account_id, dimensions in events:
        texts += [event_id, account_id]
        for name, value in (dimensions or {}).items():
            texts += [name, value]
    for row in accounts:
        texts += [value for value in row if value is not None]
    return texts


def assert_nothing_refused_is_stored(database: Database) -> None:
    for text in stored_text(database):
        assert not any(is_refused(character) for character in text), repr(text)


def error_code(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    code: str = response.json()["error"]["code"]
    assert response.json()["error"]["message"]
    return code


@pytest.fixture
def acme(billsync: Billsync) -> str:
    return create_account(billsync, "acme", "usd").id


# --- a batch of usage ---------------------------------------------------------------------------


def test_one_event_with_nul_does_not_sink_its_batch(
    client: TestClient, billsync: Billsync, acme: str
) -> None:
    batch = [
        event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="good-1"),
        event(acme, EGRESS, "1.5", at=AN_HOUR_AGO, event_id="nul", region="a\x00b"),
        event(acme, EGRESS, "2.5", at=AN_HOUR_AGO, event_id="good-2", region="fra"),
        event(acme, EGRESS, "1", at=AN_HOUR_AGO, event_id="bidi", region="fra\u202e"),
        event(acme, MACHINE, "١٢", at=AN_HOUR_AGO, event_id="digits"),
    ]
    response = client.post("/v1/usage", json={"events": batch})
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["accepted"], report["rejected"]) == (2, 3)
    verdicts = [(r["id"], (r["error"] or {}).get("code")) for r in report["results"]]
    assert verdicts == [
        ("good-1", None),
        ("nul", "invalid_dimensions"),
        ("good-2", None),
        ("bidi", "invalid_dimensions"),
        ("digits", "invalid_quantity"),
    ]
    assert "U+0000" in report["results"][1]["error"]["message"]
    lines = client.get("/v1/accounts/acme/lines").json()["lines"]
    assert sorted((item["key"], item["quantity"]) for item in lines) == [
        (f"{EGRESS}[region=fra]", "2.5"),
        (MACHINE, "60"),
    ]
    assert_nothing_refused_is_stored(billsync.database)


def test_a_lone_surrogate_makes_the_body_unreadable_not_a_500(
    client: TestClient, billsync: Billsync, acme: str
) -> None:
    """JSON can spell a lone surrogate ("\\ud800") though no UTF-8 text carries one: the body is
    refused whole, as not valid JSON, and nothing of it is recorded."""
    batch = [
        event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="good"),
        event(acme, EGRESS, "1", at=AN_HOUR_AGO, event_id="lone", region="a\ud800"),
    ]
    for body in (
        json.dumps({"events": batch}).encode(),  # as an escape
        json.dumps({"events": batch}, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ):
        response = client.post("/v1/usage", content=body, headers=JSON)
        assert error_code(response, 400) == "invalid_json"
    assert stored_text(billsync.database) == ["acme", "acme"]


# --- accounts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a\x00b", "\x00", "tab\there", "a\x85b", "line\u2028break", "evil\u202egnp.exe"]
)
def test_an_account_name_with_a_refused_character_is_422(
    client: TestClient, billsync: Billsync, name: str
) -> None:
    response = client.post("/v1/accounts", json={"id": "n1", "name": name, "currency": "usd"})
    assert error_code(response, 422) == "invalid_name"
    first = next(character for character in name if is_refused(character))
    assert f"U+{ord(first):04X}" in response.json()["error"]["message"]
    assert client.get("/v1/accounts/n1").status_code == 404
    assert_nothing_refused_is_stored(billsync.database)


def test_an_account_email_or_id_with_a_refused_character_is_422(
    client: TestClient, billsync: Billsync
) -> None:
    for body, code in [
        ({"id": "n1", "email": "a\u202e@b.test", "currency": "usd"}, "invalid_email"),
        ({"id": "n1", "email": "a@b\x00.test", "currency": "usd"}, "invalid_email"),
        ({"id": "n\x001", "currency": "usd"}, "invalid_account_id"),
        ({"id": "n1", "currency": "us\x00d"}, "invalid_currency"),
    ]:
        assert error_code(client.post("/v1/accounts", json=body), 422) == code, body
    lone = b'{"id": "n1", "name": "a\\ud800", "currency": "usd"}'
    assert client.post("/v1/accounts", content=lone, headers=JSON).status_code == 422
    assert stored_text(billsync.database) == []


def test_the_same_name_without_refused_characters_is_kept(client: TestClient) -> None:
    name = "Café Zürich — 東京 🌎 עברית"
    response = client.post("/v1/accounts", json={"id": "n1", "name": name, "currency": "usd"})
    assert response.status_code == 201, response.text
    assert client.get("/v1/accounts/n1").json()["name"] == name


# --- the path and the query string --------------------------------------------------------------

REFUSED_REQUESTS = [
    ("GET", "/v1/accounts/a%00b"),
    ("GET", "/v1/accounts/acme%E2%80%AE"),  # U+202E, percent-encoded UTF-8
    ("GET", "/v1/accounts/acme%0A"),
    ("GET", "/v1/accounts/acme/lines?period=%00"),
    ("GET", "/v1/accounts/acme/lines?period=current&x=%C2%85"),  # U+0085
    ("POST", "/v1/accounts/a%00b/sync"),
    ("GET", "/v1/accounts/a%00b/billing"),
    ("POST", "/v1/accounts/a%00b/customer-tokens"),
    ("GET", "/billing/a%00b?token=x"),
    ("GET", "/console?q=a%00b"),
    ("GET", "/console/accounts/a%00b"),
]


@pytest.mark.parametrize(("method", "path"), REFUSED_REQUESTS)
def test_a_refused_character_in_the_path_or_query_is_400(
    client: TestClient, acme: str, method: str, path: str
) -> None:
    response = client.request(method, path)
    assert error_code(response, 400) == "invalid_characters"


def test_the_path_check_comes_after_the_token_check(anonymous: TestClient) -> None:
    assert error_code(anonymous.get("/v1/accounts/a%00b"), 401) == "missing_token"


def test_paths_and_queries_without_refused_characters_still_answer(
    client: TestClient, acme: str
) -> None:
    assert client.get("/v1/accounts/acme").status_code == 200
    assert client.get("/v1/accounts/acme/lines?period=2026-11-01").status_code == 200
    assert error_code(client.get("/v1/accounts/%C3%BCber"), 404) == "account_not_found"
    assert error_code(client.get("/v1/accounts/%FF"), 404) == "account_not_found"  # U+FFFD


def test_the_console_search_with_nul_is_400_for_a_signed_in_user(
    billsync: Billsync, acme: str
) -> None:
    from billsync.api.app import create_app  # noqa: PLC0415 - one test builds its own app

    billsync.console.add_user("ada", "correct horse battery", "admin")
    with TestClient(create_app(billsync)) as browser:
        form = browser.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        signed = browser.post(
            "/console/login",
            data={"name": "ada", "password": "correct horse battery", "csrf": csrf.group(1)},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        assert browser.get("/console?q=acme").status_code == 200
        assert error_code(browser.get("/console?q=a%00b"), 400) == "invalid_characters"
        assert error_code(browser.get("/console?q=%E2%81%A6x"), 400) == "invalid_characters"


# --- bodies that cannot be read -----------------------------------------------------------------


def json_body_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every documented operation that takes a JSON body, with ids filled in."""
    document = client.get("/openapi.json").json()
    routes = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                routes.append((method.upper(), path.replace("{account_id}", "acme")))
    return routes


def test_json_nested_too_deep_or_not_utf8_is_400_on_every_json_route(
    client: TestClient, billsync: Billsync, acme: str
) -> None:
    routes = json_body_routes(client)
    assert ("POST", "/v1/usage") in routes
    assert ("POST", "/v1/accounts") in routes
    for method, path in routes:
        for body, reason in [
            (DEEP, "too deeply"),
            (b'{"events": [' + DEEP + b"]}", "too deeply"),
            (b'{"id": "a' + DEEP[:3000] + b'", "name": "\xff"}', "not UTF-8"),
        ]:
            response = client.request(method, path, content=body, headers=JSON)
            if path == "/v1/stripe/webhook":  # unsigned: refused before the body is read
                assert response.status_code == 400, response.text
                continue
            assert error_code(response, 400) == "invalid_json", (method, path)
            assert reason in response.json()["error"]["message"], (method, path)
    assert stored_text(billsync.database) == ["acme", "acme"]


# --- billsync ingest FILE -----------------------------------------------------------------------


def test_file_ingest_rejects_bad_lines_and_keeps_the_good(
    billsync: Billsync, acme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the command, on the test's store: NUL in one event failed the whole chunk on
    PostgreSQL (a traceback, nothing of the chunk recorded); a line nested too deeply or not
    UTF-8 stopped the command."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)

    def line(event_id: str, quantity: Any = 60, **dimensions: str) -> bytes:
        metric = EGRESS if dimensions else MACHINE
        raw = event("acme", metric, quantity, at=at, event_id=event_id, **dimensions)
        return json.dumps(raw).encode()

    lines = [
        line("good-1"),  # 1
        line("nul", 1, region="a\x00b"),  # 2
        line("bidi", 1, region="\u2066fra"),  # 3
        DEEP,  # 4
        b'{"id": "\xff"}',  # 5
        line("digits", "１"),  # 6
        line("zero", "0e999999999"),  # 7
        json.dumps(event("acme", EGRESS, 1, at=at, event_id="lone", region="\udc00")).encode(),
        line("good-2", "2.5", region="fra"),  # 9
    ]
    source = tmp_path / "usage.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    for name, value in {
        "BILLSYNC_DATA_DIR": str(tmp_path / "data"),
        "BILLSYNC_DATABASE_URL": billsync.database.url,
        "BILLSYNC_API_TOKEN": TEST_TOKEN,
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)

    result = CliRunner().invoke(cli, ["ingest", str(source), "--batch-size", "4",
                                      "--rejects", str(rejects)])  # fmt: skip

    assert result.exit_code == 1, result.output  # 1: some lines were rejected
    assert result.exception is None or isinstance(result.exception, SystemExit)
    written = [json.loads(item) for item in rejects.read_bytes().splitlines()]
    assert sorted((item["line"], item["error"]["code"]) for item in written) == [
        (2, "invalid_dimensions"),
        (3, "invalid_dimensions"),
        (4, "invalid_json"),
        (5, "invalid_json"),
        (6, "invalid_quantity"),
        (7, "invalid_quantity"),
        (8, "invalid_json"),
    ]
    with billsync.database.read() as connection:
        ids = connection.execute(select(usage_events.c.id)).scalars().all()
    assert sorted(ids) == ["good-1", "good-2"]
    assert_nothing_refused_is_stored(billsync.database)


# --- properties: hostile text through every way in, on each store -------------------------------

_ids = itertools.count()
refused_characters = st.sampled_from(REFUSED)
# Any character at all, lone surrogates included, and the refused ones often.
any_character = st.one_of(st.characters(exclude_categories=()), refused_characters)
# A high surrogate followed by a low one is no lone surrogate once escaped: JSON reads the pair
# as one character. Texts here keep their surrogates lone.
SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
free_text = st.text(any_character, min_size=1, max_size=8).filter(
    lambda text: SURROGATE_PAIR.search(text) is None
)
FIELDS = ("id", "account", "metric", "quantity", "timestamp", "dimensions")
CODES = {
    "id": "invalid_id", "account": "invalid_account", "metric": "unknown_metric",
    "quantity": "invalid_quantity", "timestamp": "invalid_timestamp",
    "dimensions": "invalid_dimensions",
}  # fmt: skip


def spoiled(valid: str) -> st.SearchStrategy[str]:
    """``valid`` with a refused character put somewhere in it."""
    return st.builds(
        lambda character, at: valid[:at] + character + valid[at:],
        refused_characters,
        st.integers(0, len(valid)),
    )


def field(valid: str, *also_bad: str) -> st.SearchStrategy[tuple[str, bool]]:
    """(value, whether the validator must refuse it)."""
    bad = spoiled(valid) if not also_bad else st.one_of(spoiled(valid), st.sampled_from(also_bad))
    return st.one_of(st.just((valid, False)), bad.map(lambda value: (value, True)))


@st.composite
def hostile_event(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    """An event and the code it must be refused with (None: accepted). Each field is valid or
    spoiled; the first spoiled field, in the order the validator checks them, decides."""
    metric, quantity = draw(st.sampled_from([(MACHINE, "60"), (EGRESS, "1.5")]))
    fields = {
        "id": draw(field(f"h-{next(_ids):09d}")),  # one length: the same draws every time
        "account": draw(field("acme")),
        "metric": draw(field(metric)),
        "quantity": draw(field(quantity, "١٢", "１", "٠.٥", "0e999999999", "1e100", "+1")),
        "timestamp": draw(field(rfc3339(AN_HOUR_AGO))),
    }
    dimensions: dict[str, str] = {}
    bad_dimensions = False
    if metric == EGRESS:
        (name, bad_name), (value, bad_value) = draw(field("region")), draw(field("fra"))
        dimensions[name] = value
        bad_dimensions = bad_name or bad_value
    if draw(st.booleans()):  # a free-form value: refused if it holds a refused character
        free = draw(free_text)
        dimensions["zone"] = free
        bad_dimensions = bad_dimensions or any(is_refused(c) for c in free)
    raw = {name: value for name, (value, _) in fields.items()} | {"dimensions": dimensions}
    bad = {name for name, (_, is_bad) in fields.items() if is_bad}
    if bad_dimensions:
        bad.add("dimensions")
    code = next((CODES[name] for name in FIELDS if name in bad), None)
    return raw, code


def has_lone_surrogate(raw: dict[str, Any]) -> bool:
    text = json.dumps(raw, ensure_ascii=False)
    return any(0xD800 <= ord(character) <= 0xDFFF for character in text)


def encode(raw: Any, ascii_only: bool) -> bytes:
    """JSON as a producer sends it: ``\\u`` escapes, or UTF-8 (where a lone surrogate becomes
    bytes no UTF-8 decoder reads)."""
    return json.dumps(raw, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def assert_verdict(raw: dict[str, Any], expected: str | None, code: str | None) -> None:
    """An event without lone surrogates gets exactly its verdict. One with a lone surrogate is
    refused, whichever way: its whole body or line unreadable (checked by the caller), or the
    event rejected with the code of whichever check read it first."""
    if has_lone_surrogate(raw):
        assert code is not None, raw
    else:
        assert code == expected, raw


PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
batches = st.lists(hostile_event(), min_size=1, max_size=5)


@PROPERTY_SETTINGS
@given(batch=batches, ascii_only=st.booleans())
def test_http_usage_refuses_hostile_text_per_event_on_every_store(
    client: TestClient,
    billsync: Billsync,
    acme: str,
    batch: list[tuple[dict[str, Any], str | None]],
    ascii_only: bool,
) -> None:
    events = [raw for raw, _ in batch]
    response = client.post("/v1/usage", content=encode({"events": events}, ascii_only),
                           headers=JSON)  # fmt: skip
    if response.status_code == 400:
        assert error_code(response, 400) == "invalid_json"
        assert any(has_lone_surrogate(raw) for raw in events)
    else:
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(batch)
        for (raw, expected), result in zip(batch, results, strict=True):
            assert_verdict(raw, expected, (result["error"] or {}).get("code"))
    assert_nothing_refused_is_stored(billsync.database)


@PROPERTY_SETTINGS
@given(batch=batches, ascii_only=st.booleans())
def test_stream_messages_refuse_hostile_text_per_event_on_every_store(
    billsync: Billsync,
    acme: str,
    batch: list[tuple[dict[str, Any], str | None]],
    ascii_only: bool,
) -> None:
    """A JSON Lines message, decoded and recorded as ``billsync consume`` does: every line gets
    its own verdict, or is unreadable."""
    body = b"\n".join(encode(raw, ascii_only) for raw, _ in batch)
    rules = billsync.ingest.rules()
    decoded = decode_message(body, rules)
    report = billsync.ingest.record(decoded.outcomes, rules.now)
    for unreadable in decoded.unreadable:
        assert has_lone_surrogate(batch[unreadable.position or 0][0])
    for index, result in enumerate(report.results):
        raw, expected = batch[decoded.part(index, body)[0]]
        assert_verdict(raw, expected, None if result.error is None else result.error.code.value)
    assert len(decoded.unreadable) + len(report.results) == len(batch)
    assert_nothing_refused_is_stored(billsync.database)


@PROPERTY_SETTINGS
@given(batch=batches, ascii_only=st.booleans())
def test_file_ingest_refuses_hostile_text_per_line_on_every_store(
    billsync: Billsync,
    acme: str,
    tmp_path: Path,
    batch: list[tuple[dict[str, Any], str | None]],
    ascii_only: bool,
) -> None:
    source, rejects = tmp_path / "usage.jsonl", tmp_path / "rejects.jsonl"
    source.write_bytes(b"\n".join(encode(raw, ascii_only) for raw, _ in batch) + b"\n")
    summary = ingest_file(
        billsync, source, batch_size=3, rejects=rejects, console=Console(quiet=True)
    )
    written = {
        item["line"]: item["error"]["code"]
        for item in map(json.loads, rejects.read_bytes().splitlines())
    }
    for number, (raw, expected) in enumerate(batch, start=1):
        assert_verdict(raw, expected, written.get(number))
    assert summary.accepted == len(batch) - len(written)
    assert_nothing_refused_is_stored(billsync.database)
