"""Pictures and the one-page HTML report of an evaluation: confusion-matrix heatmap,
gallery of the most confident mistakes, headline figures and per-class table."""

from __future__ import annotations

import base64
import functools
import html
from pathlib import Path

import numpy as np

from image_finetune.file_names import CONFUSION_PNG, GALLERY_PNG, REPORT_HTML


def _png_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def drawn_as_written(plot):
    """A plot whose text (class names: a user's folder names) is drawn as written, never
    parsed as mathtext: ``$\\foo$`` would crash the plot, ``$x^2$`` draw a formula."""

    @functools.wraps(plot)
    def plot_plainly(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return plot_plainly


@drawn_as_written
def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion-matrix heatmap with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    # A quarter inch per class beyond a dozen, tick labels shrinking to stay apart; counts
    # only where they fit (up to 30 classes): 100 classes stay readable.
    side = max(6.5, 0.25 * n + 2.5)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fontsize = 9 if n <= 30 else 7
    axis.set_xticks(
        range(n),
        class_names,
        rotation=45 if n <= 30 else 90,
        ha="right" if n <= 30 else "center",
        fontsize=fontsize,
    )
    axis.set_yticks(range(n), class_names, fontsize=fontsize)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        if n <= 30 and count:
            axis.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[row, col] > 0.5 else "black",
            )
    figure.colorbar(image, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@drawn_as_written
def plot_gallery(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    count: int,
    path: Path,
) -> int:
    """The most confidently wrong predictions, with true and predicted labels (``images``
    may be a row view: only the pictured rows are read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:count]
    columns = 6
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.8, rows * 2.0))
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, index in zip(np.ravel(axes), wrong, strict=False):
        axis.imshow(images[index], interpolation="nearest")
        axis.set_title(
            f"true {class_names[labels[index]]}\npred {class_names[predicted[index]]}"
            f" {probs[index, predicted[index]]:.2f}",
            fontsize=7,
        )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return len(wrong)


def write_html(out_dir: Path, title: str, metrics: dict, class_names: list[str]) -> Path:
    """One self-contained HTML page: headline figures, per-class table, pictures inline."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}"
        f"</td><td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for name, v in metrics["per_class"].items()
    )
    pairs = "".join(
        f"<li>{html.escape(p['true'])} &rarr; {html.escape(p['predicted'])}: {p['count']}</li>"
        for p in metrics["most_confused"]
    )
    latency = metrics.get("latency", {})
    ran_on = html.escape(
        f"{metrics.get('engine', 'tensorflow')} {metrics.get('precision', 'fp32')}"
    )
    low, high = metrics["accuracy_ci95"]
    pictures = "".join(
        f"<h2>{caption}</h2><img alt='{caption}' src='data:image/png;base64,"
        f"{_png_base64(out_dir / name)}'>"
        for caption, name in (
            ("Confusion matrix", CONFUSION_PNG),
            ("Most confident mistakes", GALLERY_PNG),
        )
        if (out_dir / name).exists()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 10px;
text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>Accuracy {metrics["accuracy"]:.4f}</b> (95% CI {low:.4f}-{high:.4f}, n={metrics["count"]}),
macro F1 {metrics["macro_f1"]:.4f}, macro precision {metrics["macro_precision"]:.4f},
macro recall {metrics["macro_recall"]:.4f}, lowest class recall {metrics["min_class_recall"]:.4f},
ECE {metrics["ece"]:.4f}.</p>
<p>Latency: batch 1 p50 {latency.get("batch1_p50_ms", float("nan")):.1f} ms,
p95 {latency.get("batch1_p95_ms", float("nan")):.1f} ms; batch 256
{latency.get("batch256_images_per_second", float("nan")):.0f} images/s.
Model size {metrics.get("model_size_mb", float("nan")):.1f} MB. Run on {ran_on}.</p>
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>
<th>support</th></tr>{rows}</table>
<h2>Most confused pairs</h2><ol>{pairs}</ol>{pictures}</body></html>"""
    path = out_dir / REPORT_HTML
    path.write_text(page)
    return path
