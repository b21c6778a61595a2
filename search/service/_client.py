"""The HTTP client of ``hpsearch serve`` (standard library only): what ``hpsearch submit``, ``ls
--server``, ``cancel`` and ``watch`` call."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from ._errors import ServiceError
from ._net import is_loopback

__all__ = ["SERVER_ENV", "TOKEN_ENV", "Client", "Refused", "Unreachable"]

SERVER_ENV = "HPSEARCH_SERVER"
TOKEN_ENV = "HPSEARCH_TOKEN"


class Refused(ServiceError):
    """The server refused the request: its HTTP ``status`` and ``detail`` (the message the CLI prints for the
    same problem)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Unreachable(ServiceError):
    """No server answered at the URL."""

    status = 503


class Client:
    """Talks to a ``hpsearch serve``.

    Parameters
    ----------
    url:
        The server's base URL, e.g. ``http://127.0.0.1:8000`` (else ``$HPSEARCH_SERVER``).
    token:
        A token from ``hpsearch token create`` (else ``$HPSEARCH_TOKEN``; none on loopback).
    timeout:
        Seconds to wait for an answer.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        url = url or os.environ.get(SERVER_ENV)
        if not url:
            raise ValueError(f"no server given: pass --server URL or set ${SERVER_ENV}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server {url!r}: give an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # a proxy from the environment never sees requests to this machine (nor their token)
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    def _open(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return self._opener.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read().decode() or "{}").get("detail") or e.reason
            except (ValueError, AttributeError):
                detail = str(e.reason)
            raise Refused(e.code, str(detail)) from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            raise Unreachable(f"no hpsearch server answers at {self.url} ({why}); start one with "
                              "`hpsearch serve`, or check --server / $HPSEARCH_SERVER") from None

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._open(method, path, body) as resp:
            return json.loads(resp.read().decode())

    @staticmethod
    def _q(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def submit(self, study_file: str, *, priority: int = 1, filename: str | None = None) -> dict[str, Any]:
        """Queue a study file's text; the study's entry (``GET /studies/{name}``)."""
        return self._json("POST", "/studies", {"study_file": study_file, "priority": priority, "filename": filename})

    def studies(self) -> list[dict[str, Any]]:
        """``ls -o json``'s list, with each study's queue state."""
        return self._json("GET", "/studies")["studies"]

    def study(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/studies/{self._q(name)}")

    def trials(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/studies/{self._q(name)}/trials")

    def cancel(self, name: str) -> dict[str, Any]:
        return self._json("POST", f"/studies/{self._q(name)}/cancel")

    def events(self, name: str, *, interval: float = 0.5) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(event, study)`` from the server-sent event stream, until the study stops running."""
        resp = self._open("GET", f"/studies/{self._q(name)}/events?interval={interval:g}",
                          timeout=max(60.0, self.timeout))
        with resp:
            event, data = "message", []
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
