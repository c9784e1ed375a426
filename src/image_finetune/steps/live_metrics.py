"""DVCLive for the train stage: every attempt's epochs on one step axis, written as they
happen by DVCLive's Keras callback (``dvc exp show`` and ``dvc plots`` read them during and
after a run). An attempt reused from the cache ran no epochs here: its recorded history is
logged instead, so the curves are whole either way."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Columns of history.csv that are not figures.
NOT_FIGURES = ("epoch",)


def live_metrics(folder: Path | None, index: int) -> LiveMetrics | None:
    """Attempt ``index``'s logger into ``folder`` (None: no folder, or DVCLive is not
    installed, as in the images, which run Kubeflow's steps and report to KFP instead)."""
    if folder is None:
        return None
    try:
        return LiveMetrics(folder, resume=index > 0)
    except ImportError:
        log.warning("dvclive is not installed: no live metrics in %s (pip install dvclive)",
                    folder)
        return None


class LiveMetrics:
    """One attempt's DVCLive logger; attempts after the first continue the step axis."""

    def __init__(self, folder: Path, resume: bool):
        from dvclive import Live

        self.live = Live(str(folder), resume=resume, save_dvc_exp=False, dvcyaml=False)
        self.first_step = self.live.step
        self.callback = None

    def callbacks(self) -> list:
        """The Keras callbacks that log each epoch's figures to DVCLive."""
        from dvclive.keras import DVCLiveCallback

        self.callback = DVCLiveCallback(live=self.live)
        return [self.callback]

    def finish(self, history: Path) -> None:
        """Log ``history``'s rows when the attempt ran no epochs here, then close."""
        if self.live.step == self.first_step and history.exists():
            from dvclive.utils import standardize_metric_name

            with history.open() as handle:
                for row in csv.DictReader(handle):
                    for name, value in row.items():
                        if name not in NOT_FIGURES and value not in ("", None):
                            # the callback's names: train/accuracy, eval/accuracy, ...
                            self.live.log_metric(
                                standardize_metric_name(name, "dvclive.keras"), float(value))
                    self.live.next_step()
        self.live.end()
