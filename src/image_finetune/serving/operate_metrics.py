"""The metrics of operating the model (monitoring, feedback, rollout), in the server's
registry beside serving/metrics.py's; their names are the contract the dashboard and the
alerts in infra/ are written against."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from image_finetune.serving.metrics import LATENCY_BUCKETS

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class OperateMetrics:
    """Drift, feedback and rollout metrics, labelled by model version."""

    def __init__(self, registry: CollectorRegistry):
        gauge = functools.partial(Gauge, registry=registry)
        counter = functools.partial(Counter, registry=registry)
        self.drift_detected = gauge(
            "image_finetune_drift_detected",
            "Whether the last window drifted from the reference, per test (overall: any)",
            ["model_version", "test"],
        )
        self.drift_p_value = gauge(
            "image_finetune_drift_p_value",
            "The last window's p-value per test",
            ["model_version", "test"],
        )
        self.monitor_windows = counter(
            "image_finetune_monitor_windows_total", "Windows tested", ["model_version"]
        )
        self.monitor_images = counter(
            "image_finetune_monitor_images_total",
            "Images whose summaries were monitored",
            ["model_version"],
        )
        self.monitor_dropped = counter(
            "image_finetune_monitor_dropped_total",
            "Summaries dropped because the tester was behind",
            ["model_version"],
        )
        self.monitor_skipped = counter(
            "image_finetune_monitor_skipped_total",
            "Answered images not sampled into the window (under load a share is)",
            ["model_version"],
        )
        self.monitor_sample_share = gauge(
            "image_finetune_monitor_sample_share",
            "Share of answered images sampled into the window",
            ["model_version"],
        )
        self.feedback = counter(
            "image_finetune_feedback_total", "Feedback by outcome", ["model_version", "outcome"]
        )
        self.online_accuracy = gauge(
            "image_finetune_online_accuracy", "Accuracy on labelled feedback", ["model_version"]
        )
        self._add_rollout_metrics(registry, gauge, counter)

    def _add_rollout_metrics(self, registry: CollectorRegistry, gauge, counter) -> None:
        self.rollout_requests = counter(
            "image_finetune_rollout_requests_total",
            "Requests answered by role",
            ["model_version", "role"],
        )
        self.rollout_agreement = gauge(
            "image_finetune_rollout_agreement",
            "Share of images the challenger labels as the champion does",
            ["model_version"],
        )
        self.rollout_dropped = counter(
            "image_finetune_rollout_dropped_total",
            "Copies of requests not answered by the other version because it was behind",
            ["model_version"],
        )
        self.rollout_latency = Histogram(
            "image_finetune_rollout_latency_seconds",
            "Answer latency per version and role (shadow: model time)",
            ["model_version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rollout_confidence = Histogram(
            "image_finetune_rollout_confidence",
            "Top-class probability per version and role",
            ["model_version", "role"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )

    def set_accuracy(self, by_version: dict[str, tuple[int, int]]) -> None:
        for version, (correct, total) in by_version.items():
            if total:
                self.online_accuracy.labels(version).set(correct / total)
