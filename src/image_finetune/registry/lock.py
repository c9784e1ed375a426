"""The promotion lock: whoever holds it may move the ``champion`` alias (registry.promotion).

The lock is a registered model ``<name>.promotion-lock.g<N>`` that exists only while it is
held: creating one is atomic in every MLflow store, so exactly one contender creates
generation N+1, and it may only try once generation N is gone (released: deleted) or stale.
The holder stores its lease with the lock and renews a heartbeat tag while it works; a
generation is stale when its heartbeat has not moved for the lease stored with it, as seen
by the waiter's own monotonic clock (no two machines' clocks are ever compared).

Fencing: immediately before each write that moves the champion the holder renews its
heartbeat and reads the lock back from the store. It goes on only if its generation is
still there, still its own and the newest, and its own clock says it never went a whole
lease without a confirmed renewal (a holder paused past its lease may have been broken
even if no waiter has written yet). Otherwise it raises LockLostError and writes nothing.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

from image_finetune.errors import ConfigError, LockLostError
from image_finetune.registry.client import RegistryError, mlflow_error

if TYPE_CHECKING:
    from mlflow.entities.model_registry import RegisteredModel

log = logging.getLogger(__name__)

LOCK_INFIX = ".promotion-lock.g"
CONTENDED = "RESOURCE_ALREADY_EXISTS"
# The part of its lease after which a holder no longer trusts an unrenewed lock: a waiter
# breaks it only after the whole lease, measured from when it saw the last heartbeat.
LEASE_MARGIN = 0.8


@dataclass
class LockTiming:
    """How long to wait for the lock, the lease a holder renews, how often to look."""

    timeout: float = 120.0
    lease: float = 30.0
    poll: float = 0.5


@dataclass
class _Watch:
    """What a waiter saw of one holder's heartbeat, and since when (monotonic)."""

    beats: dict[tuple, float] = field(default_factory=dict)

    def silent_for(self, *heartbeat) -> float:
        first = self.beats.setdefault(heartbeat, time.monotonic())
        return time.monotonic() - first


def stored_lease(tags: dict[str, str], default: float) -> float:
    """The lease a holder stored with its lock (``default`` for a lock that has none, as
    older holders wrote, or whose value is not a positive finite number)."""
    try:
        lease = float(tags.get("lease", ""))
    except ValueError:
        return default
    return lease if math.isfinite(lease) and lease > 0 else default


class PromotionLock:
    """``with PromotionLock(client, name) as lock:`` holds the promotion lock of model
    ``name``; ``lock.confirm()`` right before every write that must be fenced."""

    def __init__(self, client, name: str, timing: LockTiming | None = None):
        self.client, self.name = client, name
        self.timing = timing or LockTiming()
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.generation: int | None = None
        self.lost = threading.Event()
        self._lost_why = ""
        self._renewed_at = 0.0  # monotonic start of the last renewal the store confirmed
        self._beats = 0
        self._renewing = threading.Lock()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None

    def __enter__(self) -> PromotionLock:
        self.acquire()
        self._heart = threading.Thread(target=self._beat, name="promotion-lock", daemon=True)
        self._heart.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._heart is not None:
            self._heart.join()
        self.release()

    def _model(self, generation: int) -> str:
        return f"{self.name}{LOCK_INFIX}{generation}"

    def generations(self) -> dict[int, RegisteredModel]:
        """The lock's generations in the registry, by number."""
        prefix = f"{self.name}{LOCK_INFIX}"
        found = self.client.search_registered_models(f"name LIKE '{prefix}%'")
        return {
            int(m.name[len(prefix) :]): m
            for m in found
            if m.name.startswith(prefix) and m.name[len(prefix) :].isdigit()
        }

    def acquire(self) -> None:
        """Become the holder, or raise RegistryError once ``timing.timeout`` has passed.
        Every failure, contention or a store error, waits before the next try."""
        deadline, watch, problem = time.monotonic() + self.timing.timeout, _Watch(), None
        while True:
            try:
                if self._try_next_generation(watch):
                    return
            except (mlflow_error(), OSError) as exc:
                problem = exc
                log.warning("promotion lock of %s: %s; retrying", self.name, exc)
            if time.monotonic() > deadline:
                cause = f" (last error: {problem})" if problem else ""
                raise RegistryError(
                    f"could not acquire the promotion lock of {self.name} "
                    f"within {self.timing.timeout:.0f} s{cause}"
                )
            time.sleep(self.timing.poll)

    def _try_next_generation(self, watch: _Watch) -> bool:
        """Create the next generation if the current one is free; True when it is ours."""
        generations = self.generations()
        top = max(generations, default=0)
        if top and not self._free(top, generations[top], watch):
            return False
        started = time.monotonic()
        try:
            self.client.create_registered_model(
                self._model(top + 1),
                tags={
                    "owner": self.token,
                    "heartbeat": "0",
                    "lease": repr(self.timing.lease),
                    "acquired_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
        except mlflow_error() as exc:
            if exc.error_code == CONTENDED:
                return False  # another contender created it first
            raise
        self.generation, self._renewed_at, self._beats = top + 1, started, 0
        for old in (g for g in generations if g < self.generation):
            self._delete(old)
        return True

    def _free(self, generation: int, model, watch: _Watch) -> bool:
        tags = model.tags
        if tags.get("released") == "true":
            return True  # released by an older holder, which kept its generation
        lease = stored_lease(tags, self.timing.lease)
        silent = watch.silent_for(generation, tags.get("owner"), tags.get("heartbeat"))
        if silent <= lease:
            return False
        log.warning(
            "breaking the stale promotion lock %s of %s: no heartbeat for %.1f s "
            "(its lease: %.1f s)",
            tags.get("owner"),
            self.name,
            silent,
            lease,
        )
        return True

    def _renew(self, beat: bool) -> None:
        """Read the lock back from the store (moving its heartbeat first when ``beat``):
        raise LockLostError unless it is still ours and the newest, and this process never
        went most of a lease without a renewal the store confirmed."""
        with self._renewing:
            if self.lost.is_set():
                raise LockLostError(self._lost_message(self._lost_why))
            started = time.monotonic()
            self._require_fresh(started, "paused or stalled")
            held = self.generation
            if held is None:
                self._lose("it was released")
            try:
                if beat:
                    self._beats += 1
                    self.client.set_registered_model_tag(
                        self._model(held), "heartbeat", str(self._beats)
                    )
                generations = self.generations()
            except mlflow_error() as exc:
                self._lose(f"the store did not confirm it ({exc.error_code})")
            mine = generations.get(held)
            if mine is None or mine.tags.get("owner") != self.token:
                self._lose("another holder broke it and it is gone")
            if max(generations) > held:
                self._lose(f"another holder took it over (generation {max(generations)})")
            if beat:
                self._renewed_at = started
            self._require_fresh(time.monotonic(), "the store was slow to confirm it")

    def _require_fresh(self, now: float, why: str) -> None:
        """A waiter may break the lock once a whole lease passed without a heartbeat, as its
        own clock measures from when it saw the last one: stop well before that."""
        silent = now - self._renewed_at
        if silent >= self.timing.lease * LEASE_MARGIN:
            self._lose(
                f"this process went {silent:.1f} s without renewing its "
                f"{self.timing.lease:g} s lease ({why}), so a waiter may have broken it"
            )

    def _lose(self, why: str) -> NoReturn:
        self._lost_why = why
        self.lost.set()
        raise LockLostError(self._lost_message(why))

    def _lost_message(self, why: str) -> str:
        return (
            f"lost the promotion lock of {self.name}: {why}; stopped before moving the "
            "alias (nothing of this promotion was written after that point; run it again)"
        )

    def confirm(self) -> None:
        """Check synchronously, against the store, that the lock is still ours: call it
        immediately before each write it fences. Raises LockLostError otherwise. Renews
        the heartbeat too when half the lease has passed since the last renewal."""
        self._renew(beat=time.monotonic() - self._renewed_at >= self.timing.lease / 2)

    def _beat(self) -> None:
        """Renew the lease until stopped; a takeover or a store error marks the lock lost."""
        # Paced from the start of the last renewal, so slow requests do not stretch the gap.
        while not self._stop.wait(
            max(self.timing.lease / 10, self._renewed_at + self.timing.lease / 3 - time.monotonic())
        ):
            try:
                self._renew(beat=True)
            except LockLostError as exc:
                log.error("%s", exc)
                return

    def check(self) -> None:
        """Raise LockLostError if the lock is known to be lost (without asking the store)."""
        if self.lost.is_set():
            raise LockLostError(self._lost_message(self._lost_why))

    def release(self) -> None:
        """Delete our generation, so nothing of the lock stays in the registry, if it is still
        ours by our own clock and the store's record."""
        if self.generation is None:
            return
        try:
            fresh = time.monotonic() - self._renewed_at < self.timing.lease * LEASE_MARGIN
            model = self.client.get_registered_model(self._model(self.generation))
            if fresh and not self.lost.is_set() and model.tags.get("owner") == self.token:
                self.client.delete_registered_model(model.name)
        except mlflow_error() as exc:
            log.warning("releasing the promotion lock of %s: %s", self.name, exc)
        self.generation = None

    def _delete(self, generation: int) -> None:
        try:
            self.client.delete_registered_model(self._model(generation))
        except mlflow_error() as exc:
            log.debug("pruning lock generation %s: %s", generation, exc)  # pruned already


def lock_timing() -> LockTiming:
    """This process's timing, from IMAGE_FINETUNE_LOCK_TIMEOUT / IMAGE_FINETUNE_LOCK_LEASE
    (the lease it stores with the lock when it holds it; a waiter honours the holder's)."""
    return LockTiming(
        timeout=_seconds("IMAGE_FINETUNE_LOCK_TIMEOUT", 120),
        lease=_seconds("IMAGE_FINETUNE_LOCK_LEASE", 30),
    )


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable, "")
    try:
        value = float(text) if text.strip() else default
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{variable}={text!r} is not a positive number of seconds")
    return value
