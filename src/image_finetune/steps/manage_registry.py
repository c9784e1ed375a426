"""Registry operations a person runs: list versions and history, promote, roll back."""

from __future__ import annotations

from dataclasses import dataclass

from image_finetune.config import Params
from image_finetune.registry.promotion import promote, promotion_state, rollback
from image_finetune.registry.versions import list_versions


@dataclass(frozen=True)
class RegistryListing:
    """Every version (newest first), the promotion history (oldest first), and what to say
    about a promotion left unfinished (None: nothing)."""

    versions: list[dict]
    history: list[dict]
    unfinished: str | None = None

    def lines(self) -> list[str]:
        """A table of versions, then the history, as a person reads them."""
        rows = [f"{'version':>7}  {'aliases':<22} {'test acc':>8} {'macro F1':>8}  created"]
        for row in self.versions:
            accuracy, f1 = (
                f"{row[k]:.4f}" if row[k] is not None else "-"
                for k in ("test_accuracy", "test_macro_f1")
            )
            rows.append(
                f"{row['version']:>7}  {','.join(row['aliases']) or '-':<22} "
                f"{accuracy:>8} {f1:>8}  {row['created']}"
            )
        for entry in self.history:
            previous = f"v{entry['previous']}" if entry["previous"] else "none"
            state = "" if entry["state"] == "done" else f" [{entry['state']}]"
            rows.append(
                f"{entry['at']} {entry['action']:<8} v{entry['version']} (previous: "
                f"{previous}) by {entry['by']}: {entry['reason']}{state}"
            )
        if self.unfinished:
            rows.append(self.unfinished)
        return rows


def list_models(params: Params) -> RegistryListing:
    """The registered model's versions and promotion history."""
    history, unfinished = promotion_state(params.registry)
    return RegistryListing(list_versions(params.registry), history, unfinished)


def promote_version(params: Params, version: str, reason: str) -> dict:
    """Make ``version`` the champion (recorded in the history)."""
    return promote(params.registry, version, reason)


def rollback_champion(params: Params, reason: str) -> dict:
    """Restore the champion that the current champion replaced."""
    return rollback(params.registry, reason)
