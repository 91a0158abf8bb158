"""The service's logging: uvicorn's configuration plus the ``abcd`` loggers, and an optional JSON access log.

uvicorn's access log is a line of text without the request's duration; :class:`AccessLog` (an ASGI
middleware, as it must time the whole request) writes one JSON object per request instead: time,
client, method, path, status, latency and the number of uploaded files.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.config
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG

ACCESS_LOGS = ("text", "json", "off")
access = logging.getLogger("abcd.serving.access")


class AccessLog:
    """One JSON line per HTTP request on the ``abcd.serving.access`` logger."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), None  # None: no answer (the client hung up)

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except BaseException:
            status = status or 500  # what uvicorn answers for an exception
            raise
        finally:
            host, port = scope.get("client") or ("", 0)
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "client": f"{host}:{port}",
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(1000 * (time.perf_counter() - start), 2),
                "files": scope.get("state", {}).get("files", 0),
            }
            access.info(json.dumps(record))


def log_config(access_log: str) -> dict[str, Any]:
    """uvicorn's logging configuration, with the ``abcd`` loggers at INFO and, for ``json``, the JSON access log."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["message"] = {"format": "%(message)s"}
    config["handlers"]["message"] = {
        "formatter": "message",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    config["loggers"]["abcd"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["loggers"]["abcd.serving.access"] = {"handlers": ["message"], "level": "INFO", "propagate": False}
    return config


def default_handlers() -> None:
    """Handlers for the ``abcd`` loggers where nothing configured them (``uvicorn --factory`` without
    ``abcd-serve``'s :func:`log_config`): without one, Python drops their INFO lines."""
    if logging.getLogger("abcd").handlers:
        return
    config = log_config("json")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {k: config["formatters"][k] for k in ("default", "message")},
            "handlers": {k: config["handlers"][k] for k in ("default", "message")},
            "loggers": {k: config["loggers"][k] for k in ("abcd", "abcd.serving.access")},
        }
    )
