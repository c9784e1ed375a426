"""What the probes answer, from the server's state alone: one definition for the
application's probe routes and for the probe process (serving/probe_process.py), which
imports nothing but this and the standard library."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

# The probes the probe process answers (/metrics stays on the application's port: the
# metrics live in the server's process).
LIVENESS, READINESS = "/healthz", "/readyz"
OIP_LIVENESS, OIP_READINESS = "/v2/health/live", "/v2/health/ready"
PROBE_ROUTES = (LIVENESS, READINESS, OIP_LIVENESS, OIP_READINESS)


@dataclass(frozen=True)
class ProbeState:
    """The server's readiness: the version served, or why there is none."""

    version: str | None = None
    reason: str = "starting"

    @property
    def ready(self) -> bool:
        return self.version is not None

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> ProbeState:
        fields = json.loads(line)
        return cls(version=fields.get("version"), reason=str(fields.get("reason", "")))


def probe_answer(path: str, state: ProbeState, stalled_for: float | None) -> tuple[int, dict]:
    """(status, JSON body) for a probe path; ``stalled_for``: seconds the server's event loop
    has been silent, where that is over its limit (liveness and readiness then fail, so a
    wedged server is restarted rather than reported alive by the process beside it)."""
    stalled = None
    if stalled_for is not None:
        stalled = {
            "status": "stalled",
            "reason": f"the event loop has not run for {stalled_for:.0f} s",
        }
    if path == LIVENESS:
        return (503, stalled) if stalled else (200, {"status": "ok"})
    if path == OIP_LIVENESS:
        return (503, {"live": False}) if stalled else (200, {"live": True})
    if path == OIP_READINESS:
        ready = state.ready and not stalled
        return (200 if ready else 503), {"ready": ready}
    if path == READINESS:
        if stalled:
            return 503, stalled
        if not state.ready:
            return 503, {"status": "loading", "reason": state.reason}
        return 200, {"status": "ready", "model_version": state.version}
    return 404, {"detail": f"not a probe path: {path[:100]!r}"}
