"""Logging for the server: every line of a request carries its request id; text or JSON lines.

The request id comes from the client's ``X-Request-ID`` (when it is a sane token) or is made up, is
echoed in the response, and is what a 500 answer tells the client, so one id leads from a client's
report to the traceback in the log.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
# "... service.errors [4f1c...]: message" for a request's lines; no brackets outside requests.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.request_tag = "" if record.request_id == "-" else f" [{record.request_id}]"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, request_id, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)  # ASCII: a lone surrogate in a message cannot break the line


def configure(level: str, fmt: str = "text") -> None:
    """Root logging for the server process (uvicorn's loggers propagate to it: ``log_config=None``)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
