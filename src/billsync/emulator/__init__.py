"""A Stripe emulator: the slice of the Stripe API billsync uses, with the semantics that matter.

For tests, benchmarks and the demo — never production. State lives in memory.

Besides its lines, what changes an invoice's amounts is emulated as Stripe documents it:
coupons (``/v1/coupons``), a customer's discount (given by a request with a ``Stripe-Version``
before 2025-03-31.basil, removed by ``DELETE /v1/customers/{id}/discount``), an invoice's
``discounts`` (inherited from the customer unless ``""`` is sent), the customer's credit
balance (``/v1/customers/{id}/balance_transactions``) applied at finalization, and Stripe's
minimum charge per currency. The rules, and the one the docs leave open (how a percentage is
rounded), are in ``discounts``, ``balances`` and ``amounts``.
"""
