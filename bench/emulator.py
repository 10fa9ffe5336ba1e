"""Emulator throughput: invoice-item creates and ``update_lines`` on a 20-line draft.

    .venv/bin/python -m bench.emulator [--seconds 5] [--clients 3]

Starts ``billsync emulator`` in its own process and measures each operation twice, with client
processes on the same 2 cores:
- ``sdk_*``: the real stripe SDK as the client (keep-alive HTTP), as billsync calls Stripe;
- ``raw_*``: plain keep-alive HTTP posting the very form bodies the SDK sends, which leaves
  the emulator's own cost: its capacity.
A baseline is measured in the same run — the emulator's cheapest route (``GET
/_emulator/clock``) — and every figure is also given as a ratio to it.
Writes bench/results/emulator.json.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import time
from typing import Any

import stripe

from bench.common import free_port, start_emulator, write_results

KEY = "sk_test_benchmarkKey0001"
API_VERSION = "2026-10-28.endive"


def _client(port: int) -> stripe.StripeClient:
    return stripe.StripeClient(
        KEY, base_addresses={"api": f"http://127.0.0.1:{port}"}, stripe_version=API_VERSION
    )


def raw_worker(kind: str, port: int, seconds: float) -> int:
    """The emulator's own cost: pre-encoded form bodies over one keep-alive connection."""
    client = _client(port)
    customer = client.v1.customers.create(params={"name": "bench"})
    invoice = client.v1.invoices.create(params={"customer": customer.id, "currency": "usd"})
    invoice = client.v1.invoices.add_lines(invoice.id, params={"lines": [{"amount": 1}] * 20})
    line_ids = [line.id for line in invoice.lines.data]
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/x-www-form-urlencoded",
        "Stripe-Version": API_VERSION,
    }
    connection = http.client.HTTPConnection("127.0.0.1", port)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if kind == "raw_invoice_item_create":
            path = "/v1/invoiceitems"
            body = (
                f"customer={customer.id}&amount={100 + count}&currency=usd"
                f"&metadata[billsync_line_id]={count}"
            )
        else:
            path = f"/v1/invoices/{invoice.id}/update_lines"
            body = f"lines[0][id]={line_ids[count % len(line_ids)]}&lines[0][amount]={count}"
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        count += 1
    return count


def worker(kind: str, port: int, seconds: float, queue: multiprocessing.Queue[Any]) -> None:
    count = 0
    if kind.startswith("raw_"):
        queue.put(raw_worker(kind, port, seconds))
        return
    if kind == "baseline":
        connection = http.client.HTTPConnection("127.0.0.1", port)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            connection.request("GET", "/_emulator/clock")
            connection.getresponse().read()
            count += 1
        queue.put(count)
        return
    client = _client(port)
    customer = client.v1.customers.create(params={"name": "bench"})
    invoice = client.v1.invoices.create(params={"customer": customer.id, "currency": "usd"})
    invoice = client.v1.invoices.add_lines(invoice.id, params={"lines": [{"amount": 1}] * 20})
    line_ids = [line.id for line in invoice.lines.data]
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if kind == "sdk_invoice_item_create":
            client.v1.invoice_items.create(
                params={"customer": customer.id, "amount": 100 + count, "currency": "usd",
                        "metadata": {"billsync_line_id": str(count)}}
            )  # fmt: skip
        else:
            client.v1.invoices.update_lines(
                invoice.id,
                params={"lines": [{"id": line_ids[count % len(line_ids)], "amount": count}]},
            )
        count += 1
    queue.put(count)


def measure(kind: str, port: int, clients: int, seconds: float) -> float:
    queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=worker, args=(kind, port, seconds, queue))
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    total: int = sum(int(queue.get()) for _ in processes)
    for process in processes:
        process.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = start_emulator(port)
    try:
        rates = {
            kind: measure(kind, port, args.clients, args.seconds)
            for kind in (
                "baseline",
                "raw_invoice_item_create",
                "raw_update_lines",
                "sdk_invoice_item_create",
                "sdk_update_lines",
            )
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
    baseline = rates["baseline"]
    results = {
        "benchmark": "emulator",
        "machine": {"cpus": os.cpu_count()},
        "clients": args.clients,
        "seconds": args.seconds,
        "requests_per_second": {kind: round(rate) for kind, rate in rates.items()},
        "ratio_to_baseline": {kind: round(rate / baseline, 2) for kind, rate in rates.items()},
    }
    for kind, rate in rates.items():
        print(f"{kind:>22}: {rate:8,.0f} requests/s  ({rate / baseline:.2f} × baseline)")
    print(f"wrote {write_results('emulator', results)}")


if __name__ == "__main__":
    main()
