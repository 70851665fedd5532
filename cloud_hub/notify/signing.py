"""How a webhook body is signed, and how a receiver checks it.

Each delivery carries ``X-Edgeloop-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 with the rule's secret over ``f"{t}.".encode() + body`` (the exact bytes received).
A receiver recomputes it with :func:`verify_signature`, compares in constant time, and refuses
a timestamp older than its tolerance (replays). ``X-Edgeloop-Delivery`` is the delivery id
(the same on every retry, so a receiver can drop duplicates) and ``X-Edgeloop-Event`` the event.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

__all__ = [
    "DELIVERY_HEADER", "EVENT_HEADER", "SIGNATURE_HEADER", "SignatureError", "new_secret",
    "sign_body", "verify_signature",
]

SIGNATURE_HEADER = "X-Edgeloop-Signature"
DELIVERY_HEADER = "X-Edgeloop-Delivery"
EVENT_HEADER = "X-Edgeloop-Event"


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale, or does not match the body."""


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign_body(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The value of the signature header for ``body`` sent at ``timestamp``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify_signature(secret: str, body: bytes, header: str | None, *,
                     tolerance_s: float = 300.0, now: float | None = None) -> int:
    """Check a received signature header; returns its timestamp or raises SignatureError."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if not parts.get("t", "").isdigit() or "v1" not in parts:
        raise SignatureError(f"malformed {SIGNATURE_HEADER}: {header!r}")
    t = int(parts["t"])
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        raise SignatureError(f"signature timestamp {t} is outside the tolerance")
    if not hmac.compare_digest(_digest(secret, t, body), parts["v1"]):
        raise SignatureError("signature does not match the body")
    return t
