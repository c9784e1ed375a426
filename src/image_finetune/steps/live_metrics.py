"""DVCLive for the train stage: every attempt's epochs on one step axis, written as they
happen by DVCLive's Keras callback (``dvc exp show`` and ``dvc plots`` read them during and
after a run). An attempt reused from the cache ran no epochs here: its recorded history is
logged instead, so the curves are whole either way."""

from __future__ import annotations

import csv
import logging
from contextlib import ExitStack
from pathlib import Path

log = logging.getLogger(__name__)

# Columns of history.csv that are not figures.
NOT_FIGURES = ("epoch",)


def live_metrics(folder: Path | None) -> LiveMetrics | None:
    """The ladder's logger into ``folder`` (None: no folder asked for, or DVCLive cannot log
    here: not installed, as in the images, which report to KFP instead; or a git repository
    without a commit, which DVCLive refuses). The folder exists either way: DVC expects it."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from scmrepo.exceptions import SCMError

        return LiveMetrics(folder)
    except ImportError:
        log.warning("dvclive is not installed: no live metrics in %s", folder)
    except SCMError as exc:
        log.warning(
            "DVCLive cannot log in this repository (%s: commit once first); no live metrics in %s",
            exc,
            folder,
        )
    return None


class LiveMetrics:
    """One DVCLive run for the whole ladder: the step axis goes on from attempt to attempt."""

    def __init__(self, folder: Path):
        from dvclive import Live

        # Entered as a context: the callback's end of each fit then leaves the run open.
        self.run = ExitStack()
        self.live = self.run.enter_context(Live(str(folder), save_dvc_exp=False, dvcyaml=False))
        self.attempt_start = self.live.step

    def callbacks(self) -> list:
        """The Keras callbacks that log each epoch's figures of the next attempt."""
        from dvclive.keras import DVCLiveCallback

        self.attempt_start = self.live.step
        return [DVCLiveCallback(live=self.live)]

    def attempt_done(self, history: Path) -> None:
        """Log ``history``'s rows when the attempt ran no epochs here (reused, or solved
        without epochs)."""
        if self.live.step != self.attempt_start or not history.exists():
            return
        from dvclive.utils import standardize_metric_name

        with history.open() as handle:
            for row in csv.DictReader(handle):
                for name, value in row.items():
                    if name not in NOT_FIGURES and value not in ("", None):
                        # the callback's names: train/accuracy, eval/accuracy, ...
                        self.live.log_metric(
                            standardize_metric_name(name, "dvclive.keras"), float(value)
                        )
                self.live.next_step()

    def close(self) -> None:
        self.run.close()
