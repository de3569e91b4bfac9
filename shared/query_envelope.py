"""A query answer as a callbacks message: how a report the platform gave on asking enters the
normal path (the sweeper's forwards, `paynotify requery`).

Pure: no I/O. The workers verify the envelope's fields again with the merchant's keys, so the
fields kept are exactly the ones the platform's signature covers: the answer's own `code` and
`msg` only when `PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE` says the platform signs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.adapters.kafka import CallbackEnvelope
from shared.domain.events import SOURCE_QUERY
from shared.protocol.models import ENVELOPE_FIELDS

if TYPE_CHECKING:
    from shared.protocol.models import ReportAnswer


def query_envelope(
    answer: ReportAnswer,
    *,
    received_at: float,
    delivery_id: str,
    answer_sign_includes_envelope: bool,
) -> CallbackEnvelope:
    """The verified answer's signed fields as a query-sourced envelope (no peer: nobody sent
    it): the sweeper's forwards and `paynotify requery` alike."""
    dropped = () if answer_sign_includes_envelope else ENVELOPE_FIELDS
    return CallbackEnvelope(
        fields={k: v for k, v in answer.raw.items() if k not in dropped},
        key_id=answer.key_id,
        received_at=received_at,
        peer=None,
        delivery_id=delivery_id,
        source=SOURCE_QUERY,
    )
