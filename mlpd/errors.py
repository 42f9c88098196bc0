"""One error type for everything mlpd refuses or cannot do, as people and the API see it.

Every refusal carries an HTTP status, a stable machine code and a message for people.
The API answers each with ``{"error": {"code": ..., "message": ...}}`` through one Flask
handler (mlpd.web.errors), and the MLflow mount the same way; the CLI prints the message.
Modules raise their own subclasses (a user's name taken, a quota, a job already ended),
so callers can catch what they handle and let the rest reach that one handler.
"""

from __future__ import annotations


class MlpdError(Exception):
    """A refusal or failure to report: HTTP status, stable code, message for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
