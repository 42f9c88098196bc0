"""The error type for what mlpd refuses or cannot do, as people and the API see it.

Every refusal carries an HTTP status, a stable machine code and a message for people.
The API answers each with ``{"error": {"code": ..., "message": ...}}`` through one Flask
handler (mlpd.web.errors), and the MLflow mount the same way; the CLI prints the message.
Modules raise their own subclasses (a user's name taken, a quota, a job already ended),
so callers can catch what they handle and let the rest reach that one handler.

Three parsers of untrusted input are plain ValueErrors instead, because they are pure and also
used outside requests: mlpd.kinds.jobspec.SpecError, mlpd.kinds.codeship.CodeArchiveError and
mlpd.strict_json.JsonError. The API's routes translate each into a 400 of the same shape
(``invalid_field``, ``invalid_archive``, ``invalid_json``).
"""

from __future__ import annotations


class MlpdError(Exception):
    """A refusal or failure to report: HTTP status, stable code, message for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
