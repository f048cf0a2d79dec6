import { Lapse, LapseError } from "lapse-client";

/**
 * lapse, acting for the signed-in user. The app keeps its own auth (here the `x-user` header
 * stands in for the session cookie); lapse checks that the user may do what they ask (only
 * the host ends a room) with the service key and `X-Actor`.
 */
export function lapseFor(user: string): Lapse {
  return new Lapse({
    baseUrl: process.env.LAPSE_URL ?? "http://127.0.0.1:8080",
    apiKey: process.env.LAPSE_SERVICE_KEY,
    actor: user,
  });
}

export function signedInUser(req: Request): string | null {
  return req.headers.get("x-user");
}

/** A lapse refusal as the app's own JSON error, same status. */
export function refused(e: unknown): Response {
  if (e instanceof LapseError) {
    return Response.json({ error: e.code, message: e.detail }, { status: e.status });
  }
  throw e;
}
