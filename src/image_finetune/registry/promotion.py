"""Promotion: the ``champion`` alias moves only under the promotion lock, each move is
recorded in the promotion history (the registered model's tags), and rollback walks that
history back one champion at a time.

The lock is a sequence of registered models ``<name>.promotion-lock.g<N>``: creating one is
atomic in every MLflow store, so exactly one contender creates generation N+1, and it may
only try once generation N is released or stale. Its holder renews a heartbeat tag while it
works; a generation is stale when its heartbeat has not moved for a whole lease, as seen by
the waiter's own monotonic clock (no two machines' clocks are ever compared). Only the
holder's token releases its generation.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.registry.client import (
    RegistryError,
    client_for,
    not_found,
    registry_errors,
)
from image_finetune.registry.versions import CHAMPION, version_by_alias, version_correct
from image_finetune.stats import mcnemar_greater

log = logging.getLogger(__name__)

HISTORY_PREFIX = "promotion."
LOCK_INFIX = ".promotion-lock.g"
CONTENDED = "RESOURCE_ALREADY_EXISTS"


@dataclass
class LockTiming:
    """How long to wait for the lock, the lease a holder renews, how often to look."""

    timeout: float = 120.0
    lease: float = 30.0
    poll: float = 0.5


@dataclass
class _Watch:
    """What a waiter saw of one generation's heartbeat, and since when (monotonic)."""

    beats: dict[tuple[int, str], float] = field(default_factory=dict)

    def silent_for(self, generation: int, heartbeat: str) -> float:
        first = self.beats.setdefault((generation, heartbeat), time.monotonic())
        return time.monotonic() - first


class PromotionLock:
    """``with PromotionLock(client, name):`` holds the promotion lock of model ``name``."""

    def __init__(self, client, name: str, timing: LockTiming | None = None):
        self.client, self.name = client, name
        self.timing = timing or LockTiming()
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.generation: int | None = None
        self.lost = threading.Event()
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

    def generations(self) -> dict[int, object]:
        """The lock's generations in the registry, by number."""
        prefix = f"{self.name}{LOCK_INFIX}"
        found = self.client.search_registered_models(f"name LIKE '{prefix}%'")
        return {int(m.name[len(prefix):]): m for m in found
                if m.name.startswith(prefix) and m.name[len(prefix):].isdigit()}

    def acquire(self) -> None:
        """Become the holder, or raise RegistryError once ``timing.timeout`` has passed.
        Every failure, contention or a store error, waits before the next try."""
        from mlflow.exceptions import MlflowException

        deadline, watch, problem = time.monotonic() + self.timing.timeout, _Watch(), None
        while True:
            try:
                if self._try_next_generation(watch):
                    return
            except (MlflowException, OSError) as exc:
                problem = exc
                log.warning("promotion lock of %s: %s; retrying", self.name, exc)
            if time.monotonic() > deadline:
                cause = f" (last error: {problem})" if problem else ""
                raise RegistryError(f"could not acquire the promotion lock of {self.name} "
                                    f"within {self.timing.timeout:.0f} s{cause}")
            time.sleep(self.timing.poll)

    def _try_next_generation(self, watch: _Watch) -> bool:
        """Create the next generation if the current one is free; True when it is ours."""
        from mlflow.exceptions import MlflowException

        generations = self.generations()
        top = max(generations, default=0)
        if top and not self._free(top, generations[top], watch):
            return False
        try:
            self.client.create_registered_model(self._model(top + 1), tags={
                "owner": self.token, "heartbeat": "0", "released": "false",
                "acquired_at": datetime.now(UTC).isoformat(timespec="seconds")})
        except MlflowException as exc:
            if exc.error_code == CONTENDED:
                return False  # another contender created it first
            raise
        self.generation = top + 1
        for old in (g for g in generations if g < self.generation):
            self._delete(old)
        return True

    def _free(self, generation: int, model, watch: _Watch) -> bool:
        tags = model.tags
        if tags.get("released") == "true":
            return True
        silent = watch.silent_for(generation, tags.get("heartbeat", ""))
        if silent <= self.timing.lease:
            return False
        log.warning("breaking the stale promotion lock %s of %s: no heartbeat for %.0f s",
                    tags.get("owner"), self.name, silent)
        return True

    def _beat(self) -> None:
        """Renew the lease until stopped; a takeover or a store error marks the lock lost."""
        from mlflow.exceptions import MlflowException

        count = 0
        while not self._stop.wait(self.timing.lease / 3):
            count += 1
            try:
                generations = self.generations()
                if self.generation not in generations or max(generations) > self.generation:
                    raise RegistryError("another holder took it over")
                self.client.set_registered_model_tag(self._model(self.generation),
                                                     "heartbeat", str(count))
            except (MlflowException, OSError, RegistryError) as exc:
                log.error("lost the promotion lock of %s: %s", self.name, exc)
                self.lost.set()
                return

    def check(self) -> None:
        """Raise RegistryError if the lock was lost (broken by a waiter, deleted)."""
        if self.lost.is_set():
            raise RegistryError(f"the promotion lock of {self.name} was lost; nothing moved")

    def release(self) -> None:
        """Mark our generation released, if it is still ours."""
        if self.generation is None:
            return
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self._model(self.generation))
            if model.tags.get("owner") == self.token:
                self.client.set_registered_model_tag(model.name, "released", "true")
        except MlflowException as exc:
            log.warning("releasing the promotion lock of %s: %s", self.name, exc)
        self.generation = None

    def _delete(self, generation: int) -> None:
        from mlflow.exceptions import MlflowException

        with suppress(MlflowException):  # already pruned by another holder
            self.client.delete_registered_model(self._model(generation))


def lock_timing() -> LockTiming:
    """The lock's timing, from IMAGE_FINETUNE_LOCK_TIMEOUT / IMAGE_FINETUNE_LOCK_LEASE."""
    return LockTiming(timeout=float(os.environ.get("IMAGE_FINETUNE_LOCK_TIMEOUT", 120)),
                      lease=float(os.environ.get("IMAGE_FINETUNE_LOCK_LEASE", 30)))


@registry_errors
def promotion_history(params: RegistryParams) -> list[dict]:
    """Every promotion and rollback, oldest first."""
    return _history(client_for(params), params.model_name)


def _history(client, name: str) -> list[dict]:
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if not_found(exc):
            return []
        raise
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(entries, key=lambda e: e["seq"])


def champion_stack(history: list[dict]) -> list[str]:
    """The champions in force, oldest first, replaying the history: a promotion pushes its
    version, a rollback pops the current one."""
    stack: list[str] = []
    for entry in history:
        if entry["action"] == "promote":
            stack.append(entry["version"])
        elif entry["action"] == "rollback" and stack:
            stack.pop()
    return stack


def _record(client, name: str, entry: dict) -> dict:
    seq = len(_history(client, name))
    entry = {"seq": seq, "at": datetime.now(UTC).isoformat(timespec="seconds"),
             "by": getpass.getuser(), **entry}
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}", json.dumps(entry))
    return entry


def _require_version(client, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not not_found(exc):
            raise
        raise RegistryError(f"{name} has no version {version!r}") from None
    if found.status != "READY":
        raise RegistryError(f"{name} v{version} is {found.status}, not READY: not promoted")


@registry_errors
def promote(
    params: RegistryParams, version: str, reason: str,
    candidate_correct: np.ndarray | None = None, labels: np.ndarray | None = None,
    significance: float = 0.05,
) -> dict:
    """Make ``version`` the champion, under the promotion lock.

    With ``candidate_correct``, the candidate is re-compared (McNemar) with whoever is
    champion once the lock is held, so a promotion that raced another never replaces
    a champion it was not tested against.
    """
    client = client_for(params)
    name = params.model_name
    _require_version(client, name, version)
    with PromotionLock(client, name, lock_timing()) as lock:
        current = version_by_alias(client, name, CHAMPION)
        if current is not None and str(current.version) == str(version):
            return {"promoted": False, "version": str(version), "reason": "already champion"}
        if current is not None and candidate_correct is not None and labels is not None:
            test = mcnemar_greater(candidate_correct, version_correct(client, current, labels))
            if test["p_value"] >= significance:
                return {"promoted": False, "version": str(version),
                        "reason": f"not significantly better than champion v{current.version} "
                                  f"(p={test['p_value']:.4g})"}
        lock.check()
        client.set_registered_model_alias(name, CHAMPION, str(version))
        entry = _record(client, name, {
            "action": "promote", "version": str(version),
            "previous": str(current.version) if current else None, "reason": reason})
    log.info("v%s is now %s of %s (previous: %s)", version, CHAMPION, name, entry["previous"])
    return {"promoted": True, **entry}


@registry_errors
def rollback(params: RegistryParams, reason: str = "manual rollback") -> dict:
    """Restore the champion before the current one: each call walks the promotion history
    back one champion, until there is none left to restore."""
    client = client_for(params)
    name = params.model_name
    with PromotionLock(client, name, lock_timing()) as lock:
        current = version_by_alias(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        stack = champion_stack(_history(client, name))
        if not stack or stack[-1] != str(current.version):
            raise RegistryError(
                f"the champion of {name} (v{current.version}) was not set by a recorded "
                "promotion; promote the version you want explicitly")
        if len(stack) < 2:
            raise RegistryError(f"champion v{current.version} of {name} is the first in the "
                                "promotion history: there is nothing to roll back to")
        previous = stack[-2]
        lock.check()
        client.set_registered_model_alias(name, CHAMPION, previous)
        entry = _record(client, name, {"action": "rollback", "version": previous,
                                       "previous": str(current.version), "reason": reason})
    log.info("rolled back %s: champion v%s -> v%s", name, current.version, previous)
    return entry
