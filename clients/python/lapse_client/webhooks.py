"""Verifying lapse's webhooks: Standard Webhooks signatures, checked by the `standardwebhooks`
package (HMAC-SHA256 over id, timestamp and body; timestamps within five minutes)."""

from __future__ import annotations

from typing import Any, Mapping, Union

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .models import Event

__all__ = ["verify_webhook", "WebhookVerificationError"]


def verify_webhook(headers: Mapping[str, str], body: Union[bytes, str], secret: str) -> Event:
    """The event a webhook carries, once its signature checks out against `secret` (the
    endpoint's `whsec_...` secret). Raises `WebhookVerificationError` otherwise.

    Retries carry the same `webhook-id` (the event's `id`): de-duplicate on `event.id`.
    """
    payload: Any = Webhook(secret).verify(body, dict(headers))
    return Event.from_json(payload)
