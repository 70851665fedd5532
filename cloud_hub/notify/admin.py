"""Creating, changing and deleting webhook rules (REST API and console share these)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlmodel import Session, col, delete, select

from cloud_hub.core.states import DeliveryStatus
from cloud_hub.db.ops_tables import WebhookDelivery, WebhookRule
from cloud_hub.notify.signing import new_secret

__all__ = ["RuleNotFound", "create_rule", "delete_rule", "get_rule", "list_rules", "rule_view",
           "set_enabled", "validate_url"]


class RuleNotFound(LookupError):
    def __init__(self, rule_id: int) -> None:
        super().__init__(f"webhook rule {rule_id} does not exist")


def validate_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook url {url!r} must be an absolute http:// or https:// URL")
    return url


def list_rules(session: Session) -> list[WebhookRule]:
    return list(session.exec(select(WebhookRule).order_by(col(WebhookRule.id))))


def get_rule(session: Session, rule_id: int) -> WebhookRule:
    rule = session.get(WebhookRule, rule_id)
    if rule is None:
        raise RuleNotFound(rule_id)
    return rule


def create_rule(
    session: Session, *, name: str, url: str, group: str | None = None, tag: str | None = None,
    min_score: float | None = None, fault_class: str | None = None, secret: str | None = None,
) -> WebhookRule:
    rule = WebhookRule(name=name, url=validate_url(url), secret=secret or new_secret(),
                       group=group or None, tag=tag or None, min_score=min_score,
                       fault_class=fault_class or None, created_at=time.time())
    session.add(rule)
    session.commit()
    session.refresh(rule)
    return rule


def set_enabled(session: Session, rule_id: int, enabled: bool) -> WebhookRule:
    rule = get_rule(session, rule_id)
    rule.enabled = enabled
    session.add(rule)
    session.commit()
    session.refresh(rule)
    return rule


def delete_rule(session: Session, rule_id: int) -> None:
    """Delete the rule and its delivery history."""
    get_rule(session, rule_id)
    session.exec(delete(WebhookDelivery).where(
        col(WebhookDelivery.rule_id) == rule_id))
    session.exec(delete(WebhookRule).where(col(WebhookRule.id) == rule_id))
    session.commit()


def rule_view(session: Session, rule: WebhookRule, *, with_secret: bool = False
              ) -> dict[str, Any]:
    counts: dict[str, int] = dict.fromkeys(DeliveryStatus, 0)
    counts.update({status: int(n) for status, n in session.exec(
        select(WebhookDelivery.status, func.count()).where(WebhookDelivery.rule_id == rule.id)
        .group_by(col(WebhookDelivery.status)))})
    view: dict[str, Any] = {
        "id": rule.id, "name": rule.name, "url": rule.url, "group": rule.group, "tag": rule.tag,
        "min_score": rule.min_score, "fault_class": rule.fault_class, "enabled": rule.enabled,
        "created_at": rule.created_at, "secret_prefix": rule.secret[:10],
        "deliveries": counts,
    }
    if with_secret:
        view["secret"] = rule.secret
    return view
