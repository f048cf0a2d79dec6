/**
 * `lapse-client/webhooks`: verifying lapse's webhooks (Standard Webhooks signatures) with the
 * `standardwebhooks` package, a peer dependency of this entry point only.
 */
import { Webhook } from "standardwebhooks";

import type { LapseEvent } from "./client.js";

export { WebhookVerificationError } from "standardwebhooks";

/**
 * The event a webhook carries, once its signature checks out against the endpoint's
 * `whsec_...` secret; throws `WebhookVerificationError` otherwise. Retries carry the same
 * `webhook-id`, the event's `id`: de-duplicate on it.
 */
export function verifyWebhook(
  headers: Record<string, string> | Headers,
  body: string,
  secret: string,
): LapseEvent {
  const plain: Record<string, string> = {};
  if (headers instanceof Headers) headers.forEach((v, k) => (plain[k.toLowerCase()] = v));
  else for (const [k, v] of Object.entries(headers)) plain[k.toLowerCase()] = v;
  return new Webhook(secret).verify(body, plain) as LapseEvent;
}
