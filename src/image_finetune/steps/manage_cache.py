"""The ``cache`` step: what the training cache holds (``ls``) and its clean-up (``prune``), by
age and by total size, least recently used first, never an entry a run is using."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from image_finetune.cache import (
    Entry,
    human_age,
    human_size,
    is_in_use,
    list_entries,
    now,
    parse_duration,
    parse_size,
    remove_entry,
    should_prune,
)
from image_finetune.errors import ConfigError


def list_cache(cache: Path) -> list[str]:
    """A table of the cache's entries (kind, key, size, age, last used, in use, what they
    hold), least recently used first, and the total."""
    entries = list_entries(cache)
    clock = now()
    lines = [f"cache {cache}: {len(entries)} entries, {human_size(sum(e.size for e in entries))}"]
    if entries:
        lines.append(f"{'KIND':<12}{'KEY':<18}{'SIZE':>9}{'AGE':>7}{'USED':>7}  {'':6}WHAT")
    for entry in entries:
        busy = "in use" if is_in_use(cache, entry) else ""
        lines.append(
            f"{entry.kind:<12}{entry.key:<18}{human_size(entry.size):>9}"
            f"{human_age(clock - entry.created):>7}"
            f"{human_age(clock - entry.last_used):>7}  {busy:6}{entry.what}"
        )
    return lines


@dataclass
class Pruned:
    """What a prune removed, what it left because a run uses it, and the size left."""

    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)
    size_left: int = 0

    def lines(self, cache: Path) -> list[str]:
        """The prune's report."""
        freed = sum(e.size for e in self.removed)
        lines = [f"removed {e.kind} {e.key} ({human_size(e.size)})" for e in self.removed]
        lines += [f"kept {e.kind} {e.key}: in use by a run" for e in self.in_use]
        return [
            *lines,
            f"cache {cache}: freed {human_size(freed)}, {human_size(self.size_left)} left",
        ]


def prune_cache(cache: Path, older_than: str | None, max_size: str | None) -> Pruned:
    """Remove the entries unused for longer than ``older_than`` (``30d``), then the least
    recently used until the cache fits ``max_size`` (``10G``); never one a run is using."""
    if older_than is None and max_size is None:
        raise ConfigError(
            "cache prune: say what to remove, --older-than DURATION and/or --max-size SIZE"
        )
    age = parse_duration(older_than) if older_than is not None else None
    limit = parse_size(max_size) if max_size is not None else None
    entries = list_entries(cache)
    outcome = Pruned(size_left=sum(e.size for e in entries))
    clock = now()
    for entry in entries:  # least recently used first
        if not should_prune(entry, clock, outcome.size_left, age, limit):
            continue
        if remove_entry(cache, entry):
            outcome.removed.append(entry)
            outcome.size_left -= entry.size
        else:
            outcome.in_use.append(entry)
    return outcome
