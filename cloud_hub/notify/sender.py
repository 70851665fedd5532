"""Sending queued webhook deliveries: signed, retried with exponential back-off, recorded.

A delivery succeeds on any 2xx answer. Anything else (an error status, a refused connection, a
time-out) is recorded on the row (``attempts``, ``last_error``, ``last_status_code``) and tried
again after ``backoff_s * 2 ** (attempts - 1)`` seconds (at most ``backoff_max_s``), until
``max_attempts`` have failed: then the delivery is ``failed``, and the console shows it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.core.states import DeliveryStatus
from cloud_hub.db.leases import Lease, session_under
from cloud_hub.db.ops_tables import WebhookDelivery, WebhookRule
from cloud_hub.notify.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign_body

__all__ = ["DeliveryPolicy", "WebhookSender"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_s: float = 5.0
    max_attempts: int = 8
    backoff_s: float = 2.0
    backoff_max_s: float = 600.0
    batch: int = 20


class WebhookSender:
    """One tick sends the deliveries that are due (called under the notifier's lease)."""

    def __init__(self, engine: Engine, policy: DeliveryPolicy,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._engine = engine
        self.policy = policy
        self._http = httpx.Client(timeout=policy.timeout_s, transport=transport,
                                  follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def tick(self, now: float, lease: Lease | None = None) -> bool:
        """Send the deliveries that are due and record how each went.

        Under ``lease`` (:mod:`cloud_hub.db.leases`) nothing is sent by a process that lost
        it: the lease is confirmed in the database before the first send, and each send is
        made only while that confirmation lasts (its ttl, by this host's clock), so a tick that
        stalled past it sends nothing more, and the outcomes commit only while no other process
        has taken the lease over (:class:`LeaseLost`). What remains: a stall between that
        check and the request itself, or a process that lost the lease after sending but before
        recording, lets the next holder send the delivery again. Receivers see the same
        delivery id (``X-Edgeloop-Delivery``) as for any retry after a time-out (a webhook is
        delivered at least once), so a repeat is harmless to one that drops ids it has seen."""
        with Session(self._engine) as session:
            due = list(session.exec(
                select(WebhookDelivery, WebhookRule)
                .join(WebhookRule, col(WebhookRule.id) == col(WebhookDelivery.rule_id))
                .where(WebhookDelivery.status == DeliveryStatus.PENDING,
                       WebhookDelivery.next_attempt_at <= now)
                .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
                .limit(self.policy.batch)
            ))
        # No transaction is open while sending: a slow receiver holds no lock.
        if due and lease is not None:
            lease.confirm()
        outcomes = []
        for d, rule in due:
            if lease is not None and not lease.valid():
                break  # the rest wait for the next tick (the commit below is fenced)
            outcomes.append((d.id, self._send(d, rule)))
        sent_at = time.time()
        with session_under(lease, self._engine) as session:
            for delivery_id, (code, error) in outcomes:
                delivery = session.get(WebhookDelivery, delivery_id)
                if delivery is None or delivery.status != DeliveryStatus.PENDING:
                    continue
                self._record(delivery, code, error, sent_at)
                session.add(delivery)
            session.commit()
        return len(due) == self.policy.batch

    def _send(self, d: WebhookDelivery, rule: WebhookRule) -> tuple[int | None, str | None]:
        body = d.body.encode()
        headers = {
            "Content-Type": "application/json", "User-Agent": "edgeloop-hub",
            SIGNATURE_HEADER: sign_body(rule.secret, body), DELIVERY_HEADER: str(d.id),
            EVENT_HEADER: d.event,
        }
        try:
            response = self._http.post(rule.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:2000]
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"

    def _record(self, d: WebhookDelivery, code: int | None, error: str | None,
                now: float) -> None:
        d.attempts += 1
        d.last_status_code = code
        if error is None:
            d.status, d.delivered_at, d.last_error = DeliveryStatus.DELIVERED, now, None
            return
        d.last_error = error
        if d.attempts >= self.policy.max_attempts:
            d.status = DeliveryStatus.FAILED
            log.warning("webhook delivery %s (%s) failed for good after %d attempts: %s",
                        d.id, d.event, d.attempts, error)
            return
        delay = min(self.policy.backoff_s * 2 ** (d.attempts - 1), self.policy.backoff_max_s)
        d.next_attempt_at = now + delay
        log.info("webhook delivery %s attempt %d failed (%s); next in %.1fs", d.id, d.attempts,
                 error, delay)
