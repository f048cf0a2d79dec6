/** A refusal from lapse: its problem+json document, with SPEC's stable `code`. */
export class LapseError extends Error {
  readonly status: number;
  /** `not_found`, `validation_failed`, `invalid_transition`, `rate_limited`, `database_unavailable`, ... */
  readonly code: string;
  readonly detail: string;
  /** Seconds lapse asked to wait (429, 503). */
  readonly retryAfter: number | undefined;
  readonly problem: Record<string, unknown>;

  constructor(status: number, code: string, detail: string, retryAfter?: number, problem: Record<string, unknown> = {}) {
    super(`${status} ${code}: ${detail}`);
    this.name = "LapseError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
    this.problem = problem;
  }

  /** Whether the same request may succeed later (rate limited, database unavailable). */
  get retryable(): boolean {
    return this.status === 429 || this.status === 503;
  }

  static async from(response: Response): Promise<LapseError> {
    const text = await response.text();
    let problem: Record<string, unknown> = {};
    try {
      const parsed: unknown = JSON.parse(text);
      if (parsed && typeof parsed === "object") problem = parsed as Record<string, unknown>;
    } catch {
      // Not a problem document (a proxy's page, say): keep the status and the text.
    }
    const retryAfter = Number(response.headers.get("retry-after") ?? NaN);
    return new LapseError(
      response.status,
      typeof problem.code === "string" ? problem.code : response.status >= 500 ? "internal" : "unknown",
      typeof problem.detail === "string" ? problem.detail : text.slice(0, 200),
      Number.isFinite(retryAfter) ? retryAfter : undefined,
      problem,
    );
  }
}
