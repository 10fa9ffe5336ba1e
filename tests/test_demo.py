"""The demo plays a whole month through and ends with every invoice finalized, to the cent."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import httpx

from billsync.demo import Demo, DemoOptions, DemoSummary
from tests.ports import free_port


def test_the_demo_month_ends_finalized_paid_and_equal_to_stripe(tmp_path: Path) -> None:
    demo = Demo(
        DemoOptions(
            data_dir=tmp_path / "demo", port=free_port(), emulator_port=free_port(),
            accounts=3, seed=4, hours_per_second=100_000, start=date(2026, 10, 1),
        )
    )  # fmt: skip
    seen: list[DemoSummary] = []
    demo.start()
    try:
        summary = demo.run(seen.append)
        # The link sets the page's cookie and sends the browser on to the address without the
        # token (a client keeps the cookie across the redirect, as a browser does).
        with httpx.Client(follow_redirects=True) as browser:
            page = browser.get(demo.customer_link("cust-0000"))
        with httpx.Client(follow_redirects=True) as browser:
            declined = browser.get(demo.customer_link(demo.declined_account))
        headers = {"Authorization": f"Bearer {demo.api_token}"}
        bills = {
            account: httpx.get(f"{demo.url}/v1/accounts/{account}/billing", headers=headers).json()
            for account in ("cust-0000", demo.declined_account)
        }
        before = demo.clock.now()
        time.sleep(0.5)
        moved = demo.clock.now() - before
    finally:
        demo.stop()
    assert summary.phase == "done"
    assert summary.mismatches == []
    assert summary.rejected == 0
    assert summary.periods_total == summary.periods_finalized == 3
    assert summary.invoices_paid == 2
    assert summary.payment_failed == 1
    assert summary.late_lines == 1
    assert summary.duplicates > 0
    assert summary.events_accepted == summary.naive_calls + 1  # + the late event after close
    # The platform's pricing: a negotiated rate and a minimum, a prepaid credit, an alert that
    # fires and reaches the platform's endpoint with a valid signature.
    assert len(summary.pricing) == 3
    assert summary.alerts_received >= 1
    assert 0 < summary.stripe_calls < summary.naive_calls / 10
    assert len(seen) > 700  # one progress report per simulated hour, at least
    assert page.status_code == 200
    assert "cust-0000" in page.text
    assert declined.status_code == 200
    # What customers see once the month is over: last month's invoice from Stripe, paid — or,
    # for the declined card, open with the failed payment; and billsync's clock runs on.
    paid = bills["cust-0000"]["invoices"]
    assert [invoice["status"] for invoice in paid] == ["paid"], bills["cust-0000"]
    failed = bills[demo.declined_account]
    assert [invoice["status"] for invoice in failed["invoices"]] == ["open"], failed
    assert failed["failed_payment"] is not None
    assert failed["amount_due"] > 0
    assert "No invoices yet" not in page.text
    assert moved.total_seconds() > 0.3
