"""The use cases: what paynotify does, on the ports (shared.ports), apart from how messages
arrive (the consumer runtime in workers/) and how the ports are implemented (shared.adapters).

- `settle`: settle one payment notification (or a report the sweeper found by asking):
  verify, take the payment's lock or find its outcome, query the platform, decide
  (shared.domain.decision), write the outcome once, publish it, or defer or dead-letter.
- `record_order`: record an order a merchant system announced (`order.created`), once.
- `sweep`: one pending order the sweeper claimed: query it, forward a paid answer to the
  workers, expire it unpaid at expiry, give up on one that cannot be queried.
"""
