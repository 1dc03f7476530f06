"""Domain errors. Each maps to one HTTP status in one place (`http_status`)."""

from __future__ import annotations

from typing import Any


class FleetError(Exception):
    """Base of every error fleetcmd raises on purpose."""

    http_status = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class UnknownTaskType(FleetError):
    http_status = 422
    code = "unknown_task_type"


class RemovedCommand(FleetError):
    http_status = 422
    code = "removed_command"


class InvalidParams(FleetError):
    http_status = 422
    code = "invalid_params"


class TooDeep(FleetError):
    """A JSON document nested deeper than every reader of it can serialize."""

    http_status = 422
    code = "too_deep"


class NotFound(FleetError):
    http_status = 404
    code = "not_found"


class Conflict(FleetError):
    http_status = 409
    code = "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class LeaseLost(Conflict):
    code = "lease_lost"


class Unauthorized(FleetError):
    http_status = 401
    code = "unauthorized"


class BadUserProof(Unauthorized):
    """A request names a person with a user proof the indexer cannot accept (forged, expired,
    revoked, or for another user): the person logs in again."""

    code = "bad_user_proof"


class Forbidden(FleetError):
    http_status = 403
    code = "forbidden"


class TooManyRequests(FleetError):
    """Rate-limited: `Retry-After` tells the client when to come back."""

    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float, **details: Any) -> None:
        super().__init__(message, retry_after=round(retry_after, 1), **details)
        self.headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))}


class StoreUnavailable(FleetError):
    http_status = 503
    code = "store_unavailable"
