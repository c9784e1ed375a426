"""The ``rollout`` step: decide on the challenger from live labelled evidence.

``status`` shows the champion, the challenger and what the labelled pairs in the server's
feedback store say; ``promote`` makes the challenger the champion (through the promotion
lock and its history) only when the offline gate's rule holds on the live pairs, and
removes the ``challenger`` alias; ``abort`` removes the alias (the servers stop sending it
traffic at their next poll)."""

from __future__ import annotations

from image_finetune.config import Params
from image_finetune.errors import GateFailedError
from image_finetune.monitoring.feedback_store import open_existing_store
from image_finetune.monitoring.rollout import RolloutDecision, decide_rollout
from image_finetune.registry.client import RegistryError, client_for, registry_errors
from image_finetune.registry.promotion import promote
from image_finetune.registry.versions import CHAMPION, version_by_alias


@registry_errors
def rollout_versions(params: Params, challenger_alias: str) -> tuple[str, str]:
    """(champion, challenger) versions; RegistryError when either is missing or both are one."""
    client, name = client_for(params.registry), params.registry.model_name
    champion = version_by_alias(client, name, CHAMPION)
    challenger = version_by_alias(client, name, challenger_alias)
    if champion is None or challenger is None:
        missing = CHAMPION if champion is None else challenger_alias
        raise RegistryError(f"{name} has no {missing!r} version: nothing to roll out")
    if str(champion.version) == str(challenger.version):
        raise RegistryError(
            f"{name}'s {challenger_alias!r} is the champion "
            f"(v{champion.version}): nothing to roll out"
        )
    return str(champion.version), str(challenger.version)


def rollout_status(
    params: Params, feedback_uri: str | None, challenger_alias: str, min_pairs: int
) -> RolloutDecision:
    """What the live labelled pairs say about the challenger (changes nothing)."""
    champion, challenger = rollout_versions(params, challenger_alias)
    store = open_existing_store(feedback_uri)
    try:
        pairs = store.pairs(champion, challenger)
    finally:
        store.close()
    return decide_rollout(pairs, champion, challenger, min_pairs, params.gate.significance)


def rollout_promote(
    params: Params, feedback_uri: str | None, challenger_alias: str, min_pairs: int
) -> dict:
    """Promote the challenger if the live pairs show it significantly better; else
    GateFailedError with the evidence and the reason."""
    decision = rollout_status(params, feedback_uri, challenger_alias, min_pairs)
    if not decision.promote:
        raise GateFailedError(
            f"challenger v{decision.challenger} not promoted: " + "; ".join(decision.reasons)
        )
    result = promote(
        params.registry, decision.challenger, "live rollout: " + "; ".join(decision.reasons)
    )
    remove_alias(params, challenger_alias)
    return {**result, "decision": decision.to_json()}


@registry_errors
def remove_alias(params: Params, alias: str) -> None:
    client_for(params.registry).delete_registered_model_alias(params.registry.model_name, alias)


def rollout_abort(params: Params, challenger_alias: str) -> str:
    """Remove the challenger alias; the version it named, which stays registered."""
    _, challenger = rollout_versions(params, challenger_alias)
    remove_alias(params, challenger_alias)
    return challenger
