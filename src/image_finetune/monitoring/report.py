"""The drift report: a picture per test (reference vs window), a grid of the window's
images, and one self-contained HTML page (pictures embedded as base64 PNGs)."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from image_finetune.monitoring.drift import DriftResult, Window, ks_test
from image_finetune.monitoring.profile import ReferenceProfile
from image_finetune.monitoring.summaries import IMAGE_STATISTICS

SAMPLE_GRID = 36
REFERENCE_STYLE = {"color": "tab:blue", "label": "reference"}
WINDOW_STYLE = {"color": "tab:orange", "label": "window"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    _pyplot().close(figure)
    return buffer.getvalue()


def _histograms(axis, reference: np.ndarray, current: np.ndarray, title: str) -> None:
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins=30)
    axis.hist(reference, bins=edges, density=True, alpha=0.5, **REFERENCE_STYLE)
    axis.hist(current, bins=edges, density=True, alpha=0.5, **WINDOW_STYLE)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)


def _class_probabilities(profile: ReferenceProfile, window: Window) -> bytes:
    figure, (bars, worst) = _pyplot().subplots(1, 2, figsize=(10, 3.5))
    positions = np.arange(len(profile.class_names))
    bars.bar(positions - 0.2, profile.probabilities.mean(0), 0.4, **REFERENCE_STYLE)
    bars.bar(positions + 0.2, window.probabilities.mean(0), 0.4, **WINDOW_STYLE)
    bars.set_xticks(positions, profile.class_names, rotation=45, ha="right", fontsize=8)
    bars.set_title("mean probability per class", fontsize=10)
    bars.legend(fontsize=8)
    shift = [ks_test(profile.probabilities[:, c], window.probabilities[:, c])[0] for c in positions]
    chosen = int(np.argmax(shift))
    _histograms(
        worst,
        profile.probabilities[:, chosen],
        window.probabilities[:, chosen],
        f"p({profile.class_names[chosen]}): the class KS finds most shifted",
    )
    return _png(figure)


def _embedding(profile: ReferenceProfile, window: Window) -> bytes:
    figure, axis = _pyplot().subplots(figsize=(5, 4))
    columns = min(2, profile.dimensions)
    ref, cur = profile.projected[:, :columns], window.projected[:, :columns]
    if columns == 1:
        ref, cur = np.c_[ref, np.zeros(len(ref))], np.c_[cur, np.zeros(len(cur))]
    axis.scatter(ref[:, 0], ref[:, 1], s=4, alpha=0.4, **REFERENCE_STYLE)
    axis.scatter(cur[:, 0], cur[:, 1], s=4, alpha=0.4, **WINDOW_STYLE)
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title("projected embedding (first two components)", fontsize=10)
    axis.legend(fontsize=8)
    return _png(figure)


def _predicted_classes(profile: ReferenceProfile, window: Window) -> bytes:
    figure, axis = _pyplot().subplots(figsize=(6, 3.5))
    classes = len(profile.class_names)
    positions = np.arange(classes)
    for sample, offset, style in (
        (profile.probabilities, -0.2, REFERENCE_STYLE),
        (window.probabilities, 0.2, WINDOW_STYLE),
    ):
        counts = np.bincount(sample.argmax(1), minlength=classes)
        axis.bar(positions + offset, counts / counts.sum(), 0.4, **style)
    axis.set_xticks(positions, profile.class_names, rotation=45, ha="right", fontsize=8)
    axis.set_title("share of predictions per class", fontsize=10)
    axis.legend(fontsize=8)
    return _png(figure)


def _single(reference: np.ndarray, current: np.ndarray, title: str) -> bytes:
    figure, axis = _pyplot().subplots(figsize=(5, 3.5))
    _histograms(axis, reference, current, title)
    return _png(figure)


def test_figures(profile: ReferenceProfile, window: Window) -> dict[str, bytes]:
    """A PNG per test: the reference's distribution beside the window's."""
    figures = {
        "class_probabilities": _class_probabilities(profile, window),
        "embedding_mmd": _embedding(profile, window),
        "predicted_classes": _predicted_classes(profile, window),
    }
    for i, name in enumerate(IMAGE_STATISTICS):
        figures[name] = _single(profile.image_stats[:, i], window.image_stats[:, i], name)
    figures["confidence"] = _single(
        profile.probabilities.max(1),
        window.probabilities.max(1),
        "top-class probability (confidence)",
    )
    return figures


vars(test_figures)["__test__"] = False  # a domain function, not a pytest test


def sample_grid(images: np.ndarray | None, count: int = SAMPLE_GRID) -> bytes | None:
    """A grid of up to ``count`` of the window's images, evenly spaced (None: no images)."""
    if images is None or not len(images):
        return None
    chosen = np.linspace(0, len(images) - 1, min(count, len(images))).astype(int)
    side = int(np.ceil(np.sqrt(len(chosen))))
    figure, axes = _pyplot().subplots(side, side, figsize=(side * 1.2, side * 1.2))
    for axis in np.atleast_1d(axes).ravel():
        axis.axis("off")
    for axis, row in zip(np.atleast_1d(axes).ravel(), chosen, strict=False):
        axis.imshow(np.asarray(images[row]))
    return _png(figure)


def drift_html(
    result: DriftResult,
    figures: dict[str, bytes],
    samples: bytes | None,
    title: str,
    facts: dict[str, str],
) -> str:
    """The report page: verdict, facts (model, source, ...), a row and a picture per test."""
    verdict = "DRIFT" if result.drift else "no drift"
    rows = "".join(
        f"<tr class='{'drift' if t.drift else ''}'><td>{html.escape(name)}</td>"
        f"<td>{t.statistic:.4g}</td><td>{t.raw_p_value:.3g}</td><td>{t.p_value:.3g}</td>"
        f"<td>{'drift' if t.drift else 'ok'}</td></tr>"
        for name, t in result.tests.items()
    )
    listed = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in facts.items()
    )
    pictures = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(name)}</figcaption>"
        f"</figure>"
        for name, png in figures.items()
    )
    grid = (
        (
            "<h2>Images of the window</h2><img alt='samples' src='data:image/png;base64,"
            f"{base64.b64encode(samples).decode()}'>"
        )
        if samples
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}} tr.drift{{background:#fdd}}
figure{{display:inline-block;margin:8px}} .verdict{{font-size:1.4em}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="verdict">Verdict: <b>{verdict}</b> (alpha {result.alpha}, Bonferroni over
{len(result.tests)} tests; {result.window_size} images vs {result.reference_size}
reference images)</p><ul>{listed}</ul>
<table><tr><th>test</th><th>statistic</th><th>p (test)</th><th>p (adjusted)</th>
<th>verdict</th></tr>{rows}</table>
<h2>Reference vs window</h2>{pictures}{grid}</body></html>
"""
