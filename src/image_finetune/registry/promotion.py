"""Promotion: the ``champion`` alias moves only under the promotion lock, each move is
recorded in the promotion history (the registered model's tags), and rollback walks that
history back one champion at a time.

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

A promotion (or rollback) is one recoverable unit: its history entry is written first as
an intent (``state: intended``), then the alias moves, then the entry is marked done. The
next promotion or rollback settles an intent left by a killed process (done if the alias
moved, abandoned if it did not); ``models`` reports it.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.errors import ConfigError, LockLostError, RegistryStateError
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
ACTIONS = ("promote", "rollback")
INTENDED, DONE, ABANDONED = "intended", "done", "abandoned"
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
        started = time.monotonic()
        try:
            self.client.create_registered_model(self._model(top + 1), tags={
                "owner": self.token, "heartbeat": "0", "lease": repr(self.timing.lease),
                "acquired_at": datetime.now(UTC).isoformat(timespec="seconds")})
        except MlflowException as exc:
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
        log.warning("breaking the stale promotion lock %s of %s: no heartbeat for %.1f s "
                    "(its lease: %.1f s)", tags.get("owner"), self.name, silent, lease)
        return True

    def _renew(self, beat: bool) -> None:
        """Read the lock back from the store (moving its heartbeat first when ``beat``):
        raise LockLostError unless it is still ours and the newest, and this process never
        went most of a lease without a renewal the store confirmed."""
        from mlflow.exceptions import MlflowException

        with self._renewing:
            if self.lost.is_set():
                raise LockLostError(self._lost_message(self._lost_why))
            started = time.monotonic()
            self._require_fresh(started, "paused or stalled")
            try:
                if beat:
                    self._beats += 1
                    self.client.set_registered_model_tag(self._model(self.generation),
                                                         "heartbeat", str(self._beats))
                generations = self.generations()
            except MlflowException as exc:
                self._lose(f"the store did not confirm it ({exc.error_code})")
            mine = generations.get(self.generation)
            if mine is None or mine.tags.get("owner") != self.token:
                self._lose("another holder broke it and it is gone")
            if max(generations) > self.generation:
                self._lose(f"another holder took it over (generation {max(generations)})")
            if beat:
                self._renewed_at = started
            self._require_fresh(time.monotonic(), "the store was slow to confirm it")

    def _require_fresh(self, now: float, why: str) -> None:
        """A waiter may break the lock once a whole lease passed without a heartbeat, as its
        own clock measures from when it saw the last one: stop well before that."""
        silent = now - self._renewed_at
        if silent >= self.timing.lease * LEASE_MARGIN:
            self._lose(f"this process went {silent:.1f} s without renewing its "
                       f"{self.timing.lease:g} s lease ({why}), so a waiter may have broken it")

    def _lose(self, why: str):
        self._lost_why = why
        self.lost.set()
        raise LockLostError(self._lost_message(why))

    def _lost_message(self, why: str) -> str:
        return (f"lost the promotion lock of {self.name}: {why}; stopped before moving the "
                "alias (nothing of this promotion was written after that point; run it again)")

    def confirm(self) -> None:
        """Check synchronously, against the store, that the lock is still ours: call it
        immediately before each write it fences. Raises LockLostError otherwise. Renews
        the heartbeat too when half the lease has passed since the last renewal."""
        self._renew(beat=time.monotonic() - self._renewed_at >= self.timing.lease / 2)

    def _beat(self) -> None:
        """Renew the lease until stopped; a takeover or a store error marks the lock lost."""
        # Paced from the start of the last renewal, so slow requests do not stretch the gap.
        while not self._stop.wait(max(self.timing.lease / 10, self._renewed_at
                                      + self.timing.lease / 3 - time.monotonic())):
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
        from mlflow.exceptions import MlflowException

        try:
            fresh = time.monotonic() - self._renewed_at < self.timing.lease * LEASE_MARGIN
            model = self.client.get_registered_model(self._model(self.generation))
            if fresh and not self.lost.is_set() and model.tags.get("owner") == self.token:
                self.client.delete_registered_model(model.name)
        except MlflowException as exc:
            log.warning("releasing the promotion lock of %s: %s", self.name, exc)
        self.generation = None

    def _delete(self, generation: int) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(self._model(generation))
        except MlflowException as exc:
            log.debug("pruning lock generation %s: %s", generation, exc)  # pruned already


def lock_timing() -> LockTiming:
    """This process's timing, from IMAGE_FINETUNE_LOCK_TIMEOUT / IMAGE_FINETUNE_LOCK_LEASE
    (the lease it stores with the lock when it holds it; a waiter honours the holder's)."""
    return LockTiming(timeout=_seconds("IMAGE_FINETUNE_LOCK_TIMEOUT", 120),
                      lease=_seconds("IMAGE_FINETUNE_LOCK_LEASE", 30))


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable, "")
    try:
        value = float(text) if text.strip() else default
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{variable}={text!r} is not a positive number of seconds")
    return value


# The promotion history: one tag per promotion or rollback, its entry as JSON.
ENTRY_FIELDS = {"action": str, "version": str, "reason": str, "at": str, "by": str}


def history_key(seq: int) -> str:
    return f"{HISTORY_PREFIX}{seq:06d}"


def parse_history(name: str, tags: dict[str, str]) -> list[dict]:
    """Every history entry in a registered model's tags, oldest first. A tag under the
    history's prefix that this code did not write as it is (hand-edited, truncated) is a
    RegistryStateError naming it: never a guess at what it meant."""
    entries = []
    for key, value in tags.items():
        if key.startswith(HISTORY_PREFIX):
            entries.append(_entry(name, key, value))
    return sorted(entries, key=lambda e: e["seq"])


def _entry(name: str, key: str, value: str) -> dict:
    def bad(why: str) -> RegistryStateError:
        return RegistryStateError(
            f"the promotion-history tag {key!r} of {name} is malformed ({why}); restore or "
            "delete that tag (was it edited by hand?); nothing was changed")

    number = key[len(HISTORY_PREFIX):]
    if not (number.isascii() and number.isdigit()):
        raise bad("its name is not 'promotion.' and a sequence number")
    try:
        entry = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(entry, dict):
        raise bad(f"a JSON {type(entry).__name__}, not an object")
    for field_name, kind in ENTRY_FIELDS.items():
        if not isinstance(entry.get(field_name), kind):
            raise bad(f"{field_name!r} is missing or not a {kind.__name__}")
    if entry["action"] not in ACTIONS:
        raise bad(f"unknown action {entry['action']!r}")
    if entry.get("previous") is not None and not isinstance(entry["previous"], str):
        raise bad("'previous' is neither a version nor null")
    if entry.setdefault("seq", int(number)) != int(number) or isinstance(entry["seq"], bool):
        raise bad(f"its seq {entry['seq']!r} is not the {int(number)} in its name")
    if entry.setdefault("state", DONE) not in (INTENDED, DONE, ABANDONED):
        raise bad(f"unknown state {entry['state']!r}")
    entry.setdefault("previous", None)
    return entry


def champion_stack(history: list[dict]) -> list[str]:
    """The champions in force, oldest first, replaying the history: a promotion pushes its
    version, a rollback pops the current one (entries that never completed do neither)."""
    stack: list[str] = []
    for entry in history:
        if entry.get("state", DONE) != DONE:
            continue
        if entry["action"] == "promote":
            stack.append(entry["version"])
        elif entry["action"] == "rollback" and stack:
            stack.pop()
    return stack


def unfinished(history: list[dict]) -> dict | None:
    """The entry of a promotion or rollback that was started and never marked done (its
    process was killed, or the store failed, between its steps)."""
    return next((e for e in reversed(history) if e.get("state", DONE) == INTENDED), None)


def settled_state(entry: dict, champion: str | None) -> str:
    """What an unfinished entry turned out to be, given the champion now: DONE when the
    alias moved to its version, else ABANDONED (it never moved, or was moved since)."""
    return DONE if champion == entry["version"] else ABANDONED


def unfinished_report(history: list[dict], champion: str | None) -> str | None:
    """What ``models`` says about an unfinished entry (None: there is none)."""
    entry = unfinished(history)
    if entry is None:
        return None
    what = (f"UNFINISHED {entry['action']} to v{entry['version']} (#{entry['seq']}, "
            f"{entry['at']}, by {entry['by']}; champion before: v{entry['previous'] or 'none'}"
            f", now: v{champion or 'none'})")
    if settled_state(entry, champion) == DONE:
        return (f"{what}: the alias moved but the record was not completed; the next "
                "promote or rollback completes it")
    return (f"{what}: the alias did not move to it; the next promote or rollback marks it "
            "abandoned")


@registry_errors
def promotion_history(params: RegistryParams) -> list[dict]:
    """Every promotion and rollback, oldest first (unfinished ones too, by ``state``)."""
    return _history(client_for(params), params.model_name)


@registry_errors
def promotion_state(params: RegistryParams) -> tuple[list[dict], str | None]:
    """The history, and what to report about an unfinished promotion (None: nothing)."""
    client = client_for(params)
    history = _history(client, params.model_name)
    if unfinished(history) is None:
        return history, None
    return history, unfinished_report(history, _champion(client, params.model_name))


def _history(client, name: str) -> list[dict]:
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if not_found(exc):
            return []
        raise
    return parse_history(name, tags)


def _champion(client, name: str) -> str | None:
    current = version_by_alias(client, name, CHAMPION)
    return str(current.version) if current is not None else None


def _write(client, name: str, entry: dict) -> None:
    client.set_registered_model_tag(name, history_key(entry["seq"]), json.dumps(entry))


def _settle(client, name: str, lock: PromotionLock, history: list[dict]) -> list[dict]:
    """Under the lock: finish the record of an unfinished entry whose alias moved, mark one
    whose alias did not move abandoned; the history as it is then."""
    entry = unfinished(history)
    if entry is None:
        return history
    state = settled_state(entry, _champion(client, name))
    lock.confirm()
    _write(client, name, {**entry, "state": state, "settled_by": getpass.getuser()})
    log.warning("settled the unfinished %s to v%s of %s (#%s): %s", entry["action"],
                entry["version"], name, entry["seq"], state)
    return _history(client, name)


def _move_champion(client, name: str, lock: PromotionLock, history: list[dict],
                   entry: dict) -> dict:
    """The intent, the alias, the record, in that order; the lock confirmed before each of
    the first two (the record follows an alias that moved, whatever happened since)."""
    seq = max((e["seq"] for e in history), default=-1) + 1
    entry = {"seq": seq, "at": datetime.now(UTC).isoformat(timespec="seconds"),
             "by": getpass.getuser(), **entry, "state": INTENDED}
    lock.confirm()
    _write(client, name, entry)
    lock.confirm()
    client.set_registered_model_alias(name, CHAMPION, entry["version"])
    entry["state"] = DONE
    _write(client, name, entry)
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
        history = _settle(client, name, lock, _history(client, name))
        current = version_by_alias(client, name, CHAMPION)
        if current is not None and str(current.version) == str(version):
            return {"promoted": False, "version": str(version), "reason": "already champion"}
        if current is not None and candidate_correct is not None and labels is not None:
            test = mcnemar_greater(candidate_correct, version_correct(client, current, labels))
            if test["p_value"] >= significance:
                return {"promoted": False, "version": str(version),
                        "reason": f"not significantly better than champion v{current.version} "
                                  f"(p={test['p_value']:.4g})"}
        entry = _move_champion(client, name, lock, history, {
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
        history = _settle(client, name, lock, _history(client, name))
        current = version_by_alias(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        stack = champion_stack(history)
        if not stack or stack[-1] != str(current.version):
            raise RegistryError(
                f"the champion of {name} (v{current.version}) was not set by a recorded "
                "promotion; promote the version you want explicitly")
        if len(stack) < 2:
            raise RegistryError(f"champion v{current.version} of {name} is the first in the "
                                "promotion history: there is nothing to roll back to")
        entry = _move_champion(client, name, lock, history, {
            "action": "rollback", "version": stack[-2], "previous": str(current.version),
            "reason": reason})
    log.info("rolled back %s: champion v%s -> v%s", name, current.version, entry["version"])
    return entry
