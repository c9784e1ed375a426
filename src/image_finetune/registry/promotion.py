"""Promotion: the ``champion`` alias moves only under the promotion lock, each move is
recorded in the promotion history (the registered model's tags), and rollback walks that
history back one champion at a time.

The lock, and the fencing of each write under it, is registry.lock's.

A promotion (or rollback) is one recoverable unit: its history entry is written first as
an intent (``state: intended``), then the alias moves, then the entry is marked done. The
next promotion or rollback settles an intent left by a killed process (done if the alias
moved, abandoned if it did not); ``models`` reports it.
"""

from __future__ import annotations

import getpass
import json
import logging
from datetime import UTC, datetime

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.errors import RegistryStateError
from image_finetune.registry.client import (
    RegistryError,
    client_for,
    mlflow_error,
    not_found,
    registry_errors,
)
from image_finetune.registry.lock import PromotionLock, lock_timing
from image_finetune.registry.versions import CHAMPION, version_by_alias, version_correct
from image_finetune.stats import mcnemar_greater

log = logging.getLogger(__name__)

HISTORY_PREFIX = "promotion."
ACTIONS = ("promote", "rollback")
INTENDED, DONE, ABANDONED = "intended", "done", "abandoned"


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
            "delete that tag (was it edited by hand?); nothing was changed"
        )

    number = key[len(HISTORY_PREFIX) :]
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
    what = (
        f"UNFINISHED {entry['action']} to v{entry['version']} (#{entry['seq']}, "
        f"{entry['at']}, by {entry['by']}; champion before: v{entry['previous'] or 'none'}"
        f", now: v{champion or 'none'})"
    )
    if settled_state(entry, champion) == DONE:
        return (
            f"{what}: the alias moved but the record was not completed; the next "
            "promote or rollback completes it"
        )
    return f"{what}: the alias did not move to it; the next promote or rollback marks it abandoned"


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
    try:
        tags = client.get_registered_model(name).tags
    except mlflow_error() as exc:
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
    log.warning(
        "settled the unfinished %s to v%s of %s (#%s): %s",
        entry["action"],
        entry["version"],
        name,
        entry["seq"],
        state,
    )
    return _history(client, name)


def _move_champion(
    client, name: str, lock: PromotionLock, history: list[dict], entry: dict
) -> dict:
    """The intent, the alias, the record, in that order; the lock confirmed before each of
    the first two (the record follows an alias that moved, whatever happened since)."""
    seq = max((e["seq"] for e in history), default=-1) + 1
    entry = {
        "seq": seq,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": getpass.getuser(),
        **entry,
        "state": INTENDED,
    }
    lock.confirm()
    _write(client, name, entry)
    lock.confirm()
    client.set_registered_model_alias(name, CHAMPION, entry["version"])
    entry["state"] = DONE
    _write(client, name, entry)
    return entry


def _require_version(client, name: str, version: str) -> None:
    try:
        found = client.get_model_version(name, str(version))
    except mlflow_error() as exc:
        if not not_found(exc):
            raise
        raise RegistryError(f"{name} has no version {version!r}") from None
    if found.status != "READY":
        raise RegistryError(f"{name} v{version} is {found.status}, not READY: not promoted")


@registry_errors
def promote(
    params: RegistryParams,
    version: str,
    reason: str,
    candidate_correct: np.ndarray | None = None,
    labels: np.ndarray | None = None,
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
                return {
                    "promoted": False,
                    "version": str(version),
                    "reason": f"not significantly better than champion v{current.version} "
                    f"(p={test['p_value']:.4g})",
                }
        entry = _move_champion(
            client,
            name,
            lock,
            history,
            {
                "action": "promote",
                "version": str(version),
                "previous": str(current.version) if current else None,
                "reason": reason,
            },
        )
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
                "promotion; promote the version you want explicitly"
            )
        if len(stack) < 2:
            raise RegistryError(
                f"champion v{current.version} of {name} is the first in the "
                "promotion history: there is nothing to roll back to"
            )
        entry = _move_champion(
            client,
            name,
            lock,
            history,
            {
                "action": "rollback",
                "version": stack[-2],
                "previous": str(current.version),
                "reason": reason,
            },
        )
    log.info("rolled back %s: champion v%s -> v%s", name, current.version, entry["version"])
    return entry
