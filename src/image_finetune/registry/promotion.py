"""Promotion: the ``champion`` alias moves only under a lock, each move is recorded in
the promotion history (the registered model's tags), and rollback restores the champion
that the current one replaced.

The lock is itself a registered model: creating one is atomic in every MLflow store.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from contextlib import contextmanager, suppress
from datetime import UTC, datetime

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.registry.client import RegistryError, client_for
from image_finetune.registry.versions import CHAMPION, version_by_alias, version_correct
from image_finetune.stats import mcnemar_greater

log = logging.getLogger(__name__)

HISTORY_PREFIX = "promotion."
LOCK_SUFFIX = ".promotion-lock"
LOCK_STALE_SECONDS = 300


@contextmanager
def promotion_lock(client, name: str, timeout: float = 120.0):
    """Serialise promotions across processes and machines (an atomic create in the registry)."""
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(lock, tags={"acquired_at": str(time.time()),
                                                       "holder": f"{os.getpid()}"})
            break
        except MlflowException:
            try:
                held_since = float(client.get_registered_model(lock).tags.get("acquired_at", 0))
            except MlflowException:
                continue  # released between our create and get: try again at once
            if time.time() - held_since > LOCK_STALE_SECONDS:
                log.warning("breaking a stale promotion lock held since %s", held_since)
                _delete_quietly(client, lock)
                continue
            if time.monotonic() > deadline:
                raise RegistryError(f"could not acquire the promotion lock {lock!r}") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        _delete_quietly(client, lock)


def _delete_quietly(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    with suppress(MlflowException):
        client.delete_registered_model(name)


def promotion_history(params: RegistryParams) -> list[dict]:
    """Every promotion and rollback, oldest first."""
    return _history(client_for(params), params.model_name)


def _history(client, name: str) -> list[dict]:
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(entries, key=lambda e: e["seq"])


def _record(client, name: str, entry: dict) -> dict:
    seq = len(_history(client, name))
    entry = {"seq": seq, "at": datetime.now(UTC).isoformat(timespec="seconds"),
             "by": getpass.getuser(), **entry}
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}", json.dumps(entry))
    return entry


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
    with promotion_lock(client, name):
        current = version_by_alias(client, name, CHAMPION)
        if current is not None and str(current.version) == str(version):
            return {"promoted": False, "version": str(version), "reason": "already champion"}
        if current is not None and candidate_correct is not None and labels is not None:
            test = mcnemar_greater(candidate_correct, version_correct(client, current, labels))
            if test["p_value"] >= significance:
                return {"promoted": False, "version": str(version),
                        "reason": f"not significantly better than champion v{current.version} "
                                  f"(p={test['p_value']:.4g})"}
        client.set_registered_model_alias(name, CHAMPION, str(version))
        entry = _record(client, name, {
            "action": "promote", "version": str(version),
            "previous": str(current.version) if current else None, "reason": reason})
    log.info("v%s is now %s of %s (previous: %s)", version, CHAMPION, name, entry["previous"])
    return {"promoted": True, **entry}


def rollback(params: RegistryParams, reason: str = "manual rollback") -> dict:
    """Restore the previous champion (the one the current champion replaced)."""
    client = client_for(params)
    name = params.model_name
    with promotion_lock(client, name):
        current = version_by_alias(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        promotions = [e for e in _history(client, name)
                      if e["version"] == str(current.version) and e.get("previous")]
        if not promotions:
            raise RegistryError(f"champion v{current.version} of {name} replaced nobody; "
                                "there is nothing to roll back to")
        previous = promotions[-1]["previous"]
        client.set_registered_model_alias(name, CHAMPION, previous)
        entry = _record(client, name, {"action": "rollback", "version": previous,
                                       "previous": str(current.version), "reason": reason})
    log.info("rolled back %s: champion v%s -> v%s", name, current.version, previous)
    return entry
