"""Reading a running sidecar over HTTP: its ``/metrics`` and its JSON APIs.

``wsgiwatch diagnose``, ``top`` and ``timeline`` are clients of a sidecar that may run on
another host or in another container; they see it only through its HTTP port. Every failure
to get a usable answer (refused connection, timeout, an error status, a body that is not
what the sidecar sends) is one :class:`SidecarUnreachable`, which names the URL.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from wsgiwatch.errors import WsgiwatchError
from wsgiwatch.sidecar.views import LiveState, RecentRequests

DEFAULT_URL = "http://127.0.0.1:9808"
DEFAULT_TIMEOUT_S = 5.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class SidecarUnreachable(WsgiwatchError):
    """No usable answer from the sidecar at a URL (down, wrong address, not a sidecar)."""


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"1.5h"``, ``"250ms"`` -> seconds (> 0)."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 60s, 5m or 1h")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be more than 0")
    return seconds


@dataclass
class Metrics:
    """Samples of one scrape, by sample name (``wsgiwatch_requests_total``, not the family)."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def from_families(cls, families: Iterable[Metric]) -> Metrics:
        metrics = cls()
        for family in families:
            for sample in family.samples:
                metrics.samples.setdefault(sample.name, []).append(
                    (dict(sample.labels), float(sample.value))
                )
        return metrics

    @classmethod
    def from_text(cls, text: str) -> Metrics:
        return cls.from_families(text_string_to_metric_families(text))

    def total(self, name: str, **match: str) -> float:
        """The sum of ``name``'s samples whose labels include ``match``."""
        return sum(
            value
            for labels, value in self.samples.get(name, ())
            if all(labels.get(k) == v for k, v in match.items())
        )


class SidecarClient:
    """One sidecar's HTTP API at ``url`` (``http://HOST:PORT``)."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{url!r} is not an http:// URL of a sidecar")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.timeout_s = timeout_s

    def _get(self, path: str) -> bytes:
        url = self.url + path
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:
                body: bytes = reply.read()
                return body
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace").strip()
            raise SidecarUnreachable(f"{url}: HTTP {exc.code} {detail}".rstrip()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SidecarUnreachable(f"{url}: {reason}") from None

    def get_json(self, path: str) -> dict[str, Any]:
        body = self._get(path)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise SidecarUnreachable(f"{self.url}{path}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SidecarUnreachable(f"{self.url}{path}: expected a JSON object")
        return data

    def _checked(self, path: str, key: str) -> dict[str, Any]:
        data = self.get_json(path)
        if key not in data:
            raise SidecarUnreachable(
                f"{self.url}{path}: no {key!r} in the answer (a wsgiwatch sidecar older than "
                "this client?)"
            )
        return data

    def metrics(self) -> Metrics:
        text = self._get("/metrics").decode("utf-8", "replace")
        try:
            return Metrics.from_text(text)
        except ValueError as exc:
            raise SidecarUnreachable(f"{self.url}/metrics: not Prometheus text ({exc})") from None

    def state(self) -> LiveState:
        return cast(LiveState, self._checked("/api/state", "workers"))

    def recent_requests(self, since_s: float) -> RecentRequests:
        return cast(RecentRequests, self._checked(f"/api/requests?since={since_s:g}", "requests"))
