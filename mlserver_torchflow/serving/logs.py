"""The runtime's log lines: one per failed request, and an optional single-line JSON format.

Every line of the runtime goes through the `mlserver.torchflow` logger. In text mode it propagates to
MLServer's handler (`<time> [mlserver.torchflow][<model>] LEVEL - message`). In JSON mode it gets a
handler of its own on stdout whose lines are one JSON object each, tracebacks included as a field:
MLServer's own `use_structured_logging` pastes the message into a JSON template without escaping it,
so a quote or a traceback breaks the line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlserver.context import model_name_var

from ..common import first_line, logger
from ..errors import TorchFlowError
from ..patches.internals import mlserver_structured_logging

_JSON_HANDLER = "torchflow_json"
_REASON_CHARS = 500


class JsonFormatter(logging.Formatter):
    """`{"timestamp", "level", "logger", "model", "message", "request_id", "status", ...}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "model": getattr(record, "model_name", None) or model_name_var.get("") or None,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "status": getattr(record, "status", None),
        }
        x_request_id = getattr(record, "x_request_id", None)
        if x_request_id:
            entry["x_request_id"] = x_request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: str | None) -> str:
    """Switch the runtime's lines to `json` or `text` (process-wide: the server setting
    `log_format`); None follows MLServer's `use_structured_logging`. Returns the format in effect."""
    if log_format is None:
        log_format = "json" if mlserver_structured_logging() else "text"
    handler = next((h for h in logger.handlers if h.get_name() == _JSON_HANDLER), None)
    if log_format == "json":
        if handler is None:
            handler = logging.StreamHandler(sys.stdout)
            handler.set_name(_JSON_HANDLER)
            handler.setFormatter(JsonFormatter())
            logger.addHandler(handler)
        logger.propagate = False
    else:
        if handler is not None:
            logger.removeHandler(handler)
        logger.propagate = True
    return log_format


def request_failed(
    model: str, request_id: str | None, headers: Mapping[str, str] | None, err: TorchFlowError
) -> None:
    """One line for a request the runtime refused (4xx: WARNING) or could not answer (5xx: ERROR).

    The traceback of a model failure (the exception behind a 5xx) follows the line, as for any
    `logger.exception`; a refusal needs none: its reason is the whole story.
    """
    status = err.status_code
    reason = first_line(str(err), _REASON_CHARS)
    request_id = request_id or None  # gRPC requests without an id carry "" (MLServer generates none)
    x_request_id = (headers or {}).get("x-request-id")
    cause = err.__cause__
    exc_info = None
    if status >= 500 and cause is not None and not isinstance(cause, TorchFlowError):
        exc_info = (type(cause), cause, cause.__traceback__)
    trace = f" (x-request-id {x_request_id})" if x_request_id and x_request_id != request_id else ""
    logger.log(
        logging.ERROR if status >= 500 else logging.WARNING,
        "request %s to model %s failed with %d%s: %s",
        request_id or "-",
        model,
        status,
        trace,
        reason,
        exc_info=exc_info,
        extra={"model_name": model, "request_id": request_id, "status": status, "x_request_id": x_request_id},
    )


def tag_with_request_id(err: TorchFlowError, request_id: str | None) -> None:
    """Append the request id to the message the client gets, so that a report can be found in the log.

    MLServer generates the id when the client sends none, and an error body carries nothing else.
    """
    if request_id and request_id not in str(err):
        err.args = (f"{err} (request id {request_id})", *err.args[1:])
