"""How the server refuses a request: an HTTP status and a message for the client."""

from __future__ import annotations


class Rejected(Exception):
    """A request refused with a 4xx/5xx status and a message that says what to change."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
