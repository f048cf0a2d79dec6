"""Errors: every refusal from lapse is a problem+json document with a stable `code`."""

from __future__ import annotations

from typing import Any, Optional


class LapseError(Exception):
    """lapse refused a request (or could not be reached).

    `code` is SPEC's problem code (`not_found`, `validation_failed`, `invalid_transition`,
    `host_has_open_session`, `rate_limited`, `database_unavailable`, ...), `status` the HTTP
    status, `retry_after` the seconds lapse asked to wait (429 and 503), `problem` the whole
    document.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        retry_after: Optional[float] = None,
        problem: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.problem = problem or {}

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (rate limited, database unavailable)."""
        return self.status in (429, 503)
