"""Topic names: promises to other systems, kept in one place.

The names below are the defaults. `PAYNOTIFY_TOPIC_PREFIX` puts a prefix before every one of them
(`Settings.topics`), so deployments (or demo runs) that share a broker keep to themselves; every
process and tool reads the names from there, never from the constants directly.
"""

from __future__ import annotations

from dataclasses import dataclass

CALLBACKS = (
    "paynotify.callbacks"  # verified notifications (and sweeper findings), keyed mch_id:mch_order
)
REJECTED = "paynotify.rejected"  # audit trail of refused notifications, best effort, no secrets
EVENTS = "paynotify.events"  # domain events (CloudEvents), keyed mch_id:mch_order
ORDERS = "paynotify.orders"  # order.created messages from merchant systems
DLQ = "paynotify.dlq"  # messages that could not be settled, with their reason

ALL = (CALLBACKS, REJECTED, EVENTS, ORDERS, DLQ)


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one deployment: the names above behind its prefix."""

    prefix: str = ""

    @property
    def callbacks(self) -> str:
        return self.prefix + CALLBACKS

    @property
    def rejected(self) -> str:
        return self.prefix + REJECTED

    @property
    def events(self) -> str:
        return self.prefix + EVENTS

    @property
    def orders(self) -> str:
        return self.prefix + ORDERS

    @property
    def dlq(self) -> str:
        return self.prefix + DLQ

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(self.prefix + name for name in ALL)
