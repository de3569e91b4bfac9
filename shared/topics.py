"""Topic names: promises to other systems, kept in one place."""

CALLBACKS = (
    "paynotify.callbacks"  # verified notifications (and sweeper findings), keyed mch_id:mch_order
)
REJECTED = "paynotify.rejected"  # audit trail of refused notifications, best effort, no secrets
EVENTS = "paynotify.events"  # domain events (CloudEvents), keyed mch_id:mch_order
ORDERS = "paynotify.orders"  # order.created messages from merchant systems
DLQ = "paynotify.dlq"  # messages that could not be settled, with their reason

ALL = (CALLBACKS, REJECTED, EVENTS, ORDERS, DLQ)
