"""Alertmanager -> Kubeflow Pipelines: a small HTTP receiver for Alertmanager's webhook that
starts the monitoring pipeline when a retraining alert fires.

    POST /alerts    Alertmanager's webhook JSON (version 4), ``Authorization: Bearer <token>``
    GET  /healthz   for the probes

Alertmanager sends a group again on every ``group_interval`` while it changes and every
``repeat_interval`` while it fires, from each of its replicas. So the receiver starts at most
one run per firing alert (its fingerprint and ``startsAt``: the same alert firing again after
it resolved is a new one), at most one run per ``min_interval`` overall, only for alerts
labelled ``retrain="true"`` (infra/k8s/components/monitoring) and never for resolved ones.
What it started, and when, is kept in a small SQLite file (``--state-file``, on a volume): a
restarted receiver does not start the same alert's run again, nor a run within the interval.

Replies: 200 with what was done (the run started, or why none: resolved, no retraining alert,
already started for this alert, rate limited), which Alertmanager must not retry; 400 for a
payload that is not Alertmanager's, 401 without the token, 404/405 elsewhere, 411/413 for a
body without a length or over 1 MiB; 502 when Kubeflow Pipelines refused or is away: nothing
is recorded then, so Alertmanager's retry can start the run.
"""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from image_finetune.errors import PipelineError

log = logging.getLogger(__name__)

ALERTS_PATH = "/alerts"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1 << 20  # Alertmanager caps a group at max_alerts; 1 MiB is hundreds
RETRAIN_LABEL = ("retrain", "true")
REMEMBERED_ALERTS = 10_000  # fingerprints kept for deduplication, oldest forgotten first
MIN_TOKEN_LENGTH = 16
SOCKET_TIMEOUT_SECONDS = 10  # a client that stalls mid-request holds a thread no longer
MAX_CONNECTIONS = 16  # Alertmanager sends one notification per group at a time


class BadNotification(ValueError):
    """The body is not an Alertmanager webhook notification."""


@dataclass(frozen=True)
class Alert:
    name: str
    status: str
    fingerprint: str
    starts_at: str
    labels: dict[str, str]

    @property
    def key(self) -> tuple[str, str]:
        """One firing of one alert: Alertmanager's fingerprint is of the labels only."""
        return self.fingerprint, self.starts_at

    @property
    def retrains(self) -> bool:
        return self.labels.get(RETRAIN_LABEL[0]) == RETRAIN_LABEL[1]


def _text(value: Any, where: str, limit: int = 1024) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise BadNotification(f"{where}: expected a string of at most {limit} characters")
    return value


def _alert(raw: Any, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict):
        raise BadNotification(f"{where}: expected an object with labels")
    labels = {
        _text(k, f"{where}.labels", 256): _text(v, f"{where}.labels.{k}")
        for k, v in raw["labels"].items()
    }
    status = _text(raw.get("status"), f"{where}.status")
    if status not in ("firing", "resolved"):
        raise BadNotification(f"{where}.status: {status!r} is neither firing nor resolved")
    return Alert(
        name=labels.get("alertname", ""),
        status=status,
        fingerprint=_text(raw.get("fingerprint"), f"{where}.fingerprint", 64),
        starts_at=_text(raw.get("startsAt"), f"{where}.startsAt", 64),
        labels=labels,
    )


def parse_notification(body: bytes) -> tuple[str, list[Alert]]:
    """The group key and the alerts of an Alertmanager webhook notification (version 4)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadNotification(f"not JSON: {exc}") from None
    if not isinstance(payload, dict) or payload.get("version") != "4":
        raise BadNotification('expected Alertmanager\'s webhook payload, version "4"')
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise BadNotification("alerts: expected a list")
    group_key = _text(payload.get("groupKey"), "groupKey", 4096)
    return group_key, [_alert(raw, index) for index, raw in enumerate(alerts)]


class StartedAlerts:
    """The alerts a run was started for, and the last start, in one SQLite file: at most
    ``limit`` alerts, the oldest forgotten first. Written before the receiver answers, so a
    restart (or a crash right after) remembers every run it reported started."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS started (fingerprint TEXT NOT NULL, "
        "starts_at TEXT NOT NULL, started_at REAL NOT NULL, "
        "PRIMARY KEY (fingerprint, starts_at))"
    )

    def __init__(self, path: Path, limit: int = REMEMBERED_ALERTS):
        self.path, self.limit = Path(path), limit
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(self.SCHEMA)
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise ValueError(f"cannot keep the receiver's state in {self.path}: {exc}") from None

    def load(self) -> tuple[OrderedDict, float | None]:
        """The remembered alerts (oldest first) and the last start (None: never)."""
        rows = self._db.execute(
            "SELECT fingerprint, starts_at, started_at FROM started ORDER BY started_at, rowid"
        ).fetchall()
        started = OrderedDict(((fingerprint, starts_at), at) for fingerprint, starts_at, at in rows)
        return started, (max(started.values()) if started else None)

    def remember(self, keys: list[tuple[str, str]], at: float) -> None:
        """Record that a run started at ``at`` for these alerts; forget the oldest past the
        limit."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO started VALUES (?, ?, ?)", [(*key, at) for key in keys]
            )
            self._db.execute(
                "DELETE FROM started WHERE rowid NOT IN (SELECT rowid FROM "
                "started ORDER BY started_at DESC, rowid DESC LIMIT ?)",
                (self.limit,),
            )

    def close(self) -> None:
        self._db.close()


@dataclass
class TriggerPolicy:
    """Which notifications start a run: a firing retraining alert not started before, at
    most one run per ``min_interval`` seconds. Its memory is bounded, and kept in ``memory``
    (a :class:`StartedAlerts` file) where one is given; the clock is the wall clock for that
    reason (a monotonic clock starts again with the process)."""

    min_interval: float
    clock: Callable[[], float] = time.time
    memory: StartedAlerts | None = None
    started: OrderedDict = field(default_factory=OrderedDict)
    last_start: float | None = None

    def __post_init__(self):
        if self.memory is not None:
            self.started, self.last_start = self.memory.load()

    def choose(self, alerts: list[Alert]) -> tuple[Alert | None, str]:
        """The alert to start a run for, or None and why not."""
        firing = [alert for alert in alerts if alert.status == "firing"]
        retraining = [alert for alert in firing if alert.retrains]
        fresh = [alert for alert in retraining if alert.key not in self.started]
        if not fresh:
            return None, (
                "already started for this alert"
                if retraining
                else "no firing retraining alert"
                if firing
                else "resolved"
            )
        now = self.clock()
        if self.last_start is not None and now - self.last_start < self.min_interval:
            # a clock set back never makes the wait longer than one interval
            wait = min(self.min_interval - (now - self.last_start), self.min_interval)
            return None, f"rate limited: the next run may start in {wait:.0f} s"
        return fresh[0], "started"

    def record(self, alerts: list[Alert]) -> None:
        """A run started for these alerts (each firing retraining alert of the group)."""
        self.last_start = self.clock()
        keys = [alert.key for alert in alerts if alert.status == "firing" and alert.retrains]
        if self.memory is not None:
            try:
                self.memory.remember(keys, self.last_start)
            except sqlite3.Error as exc:  # the run started: say so, remember it in memory
                log.error(
                    "the receiver's state file %s was not written (%s): a restart "
                    "may start this alert's run again",
                    self.memory.path,
                    exc,
                )
        for key in keys:
            self.started[key] = self.last_start
            self.started.move_to_end(key)
        limit = self.memory.limit if self.memory is not None else REMEMBERED_ALERTS
        while len(self.started) > limit:
            self.started.popitem(last=False)


@dataclass
class AlertReceiver:
    """Checks the token, parses the notification, asks the policy, submits the run (one
    notification at a time: two replicas of Alertmanager sending the same group at once
    start one run)."""

    token: str
    policy: TriggerPolicy
    submit: Callable[[str], str]  # run name -> run id
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the receiver's token must have at least {MIN_TOKEN_LENGTH} characters"
            )

    def authorized(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.token.encode()
        )

    def handle(self, body: bytes) -> tuple[int, dict]:
        try:
            group_key, alerts = parse_notification(body)
        except BadNotification as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        with self.lock:
            alert, reason = self.policy.choose(alerts)
            if alert is None:
                log.info("alerts of group %s: no run (%s)", group_key[:120], reason)
                return HTTPStatus.OK, {"started": None, "reason": reason}
            run_name = f"monitoring-{alert.name or 'alert'}-{alert.fingerprint}"[:120]
            try:
                run_id = self.submit(run_name)
            except PipelineError as exc:
                log.warning("alert %s: the run was not started: %s", alert.name, exc)
                return HTTPStatus.BAD_GATEWAY, {"error": f"the run was not started: {exc}"}
            self.policy.record(alerts)
        log.info("alert %s (%s): started run %s", alert.name, alert.fingerprint, run_id)
        return HTTPStatus.OK, {"started": run_id, "alert": alert.name, "reason": reason}


def handler_for(receiver: AlertReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_SECONDS
        server_version = "image-finetune-alert-receiver"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - the base class' name
            log.debug("%s %s", self.address_string(), format % args)

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == HEALTH_PATH:
                self.reply(HTTPStatus.OK, {"status": "ok"})
            else:
                self.reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path[:100]}"})

        def do_POST(self):  # noqa: N802
            if self.path != ALERTS_PATH:
                self.reply(HTTPStatus.NOT_FOUND, {"error": f"POST to {ALERTS_PATH}"})
            elif not receiver.authorized(self.headers.get("Authorization")):
                self.reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            else:
                self.reply(*self.read_and_handle())

        def read_and_handle(self) -> tuple[int, dict]:
            length = self.headers.get("Content-Length", "")
            if not length.isdigit():
                self.close_connection = True
                return HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"}
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True  # the body is left unread
                return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {
                    "error": f"body over {MAX_BODY_BYTES} bytes"
                }
            return receiver.handle(self.rfile.read(int(length)))

        def refuse_method(self):
            self.reply(
                HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"GET {HEALTH_PATH} or POST {ALERTS_PATH}"}
            )

        do_PUT = do_DELETE = do_PATCH = refuse_method  # noqa: N815

    return Handler


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once: the others are closed
    unanswered (Alertmanager retries), so idle or slow clients cannot take every thread."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            log.warning("connection from %s refused: %s", client_address[0], "too many")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_server(
    receiver: AlertReceiver, host: str, port: int, max_connections: int = MAX_CONNECTIONS
) -> ThreadingHTTPServer:
    """The receiver's HTTP server, bound (port 0: any free port); ``serve_forever`` runs it."""
    return BoundedServer((host, port), handler_for(receiver), max_connections)
