"""A registered version's model card: what it was trained on (with the hashes that pin the
data), how the retrain loop got there, what it scores on the test set (with intervals), how
fast it is, what it is for and where it falls short. One structure, rendered as Markdown
(the run's ``model_card.md``), as self-contained HTML (``model_card.html``, pictures inline)
and as the registry's short description. Pure: the register step gathers the facts."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

Table = tuple[list[str], list[list[str]]]
Block = str | Table  # a paragraph (inline Markdown: **bold**, `code`) or a table


@dataclass(frozen=True)
class CardFacts:
    """What the pipeline knows of a registered version."""

    model_name: str
    version: str
    backbone: str
    class_names: list[str]
    image_fit: str
    manifest: dict  # the canonical dataset's manifest.json
    manifest_sha256: str
    test: dict  # the test evaluation's details.json
    decision: dict  # the final gate's decision file
    attempts: list[dict] = field(default_factory=list)  # the loop's records (ladder.py)
    engine: dict | None = None  # the evaluation's engine.json, where the engine was measured
    lineage: dict = field(default_factory=dict)  # pipeline_run_id, git_commit, params_sha256


SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block]


def figure(value, digits: int = 4) -> str:
    """A number as a card shows it (None: an em dash)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def image_side(facts: CardFacts) -> int:
    return int(facts.manifest.get("image_shape", [0])[0])


def accuracy_line(test: dict) -> str:
    low, high = test.get("accuracy_ci95") or (None, None)
    interval = f" (95% CI {figure(low)}–{figure(high)})" if low is not None else ""
    return f"{figure(test['accuracy'])}{interval} on {test.get('count', '?')} test images"


def summary(facts: CardFacts) -> str:
    source = facts.manifest.get("source", {})
    return (
        f"`{facts.backbone}` fine-tuned on {source.get('name', 'its data')} "
        f"({len(facts.class_names)} classes, {image_side(facts)} px): test accuracy "
        f"**{accuracy_line(facts.test)}**."
    )


def intended_use(facts: CardFacts) -> Section:
    side = image_side(facts)
    return Section(
        "Intended use",
        [
            f"Classify RGB photos into one of: {', '.join(facts.class_names)}. Images of another "
            f"size are fitted to {side}x{side} ({facts.image_fit}), as in training.",
            "Serve it with this project's server (multipart or the Open Inference Protocol) or "
            "with `mlflow models serve` (base64 images in the `image` column; a `label` and the "
            "class `probabilities` out).",
            "Out of scope: images of none of these classes (it still answers one of them), "
            "decisions about people, and any use where a wrong label is costly without review.",
        ],
    )


def data_section(facts: CardFacts) -> Section:
    source, splits = facts.manifest.get("source", {}), facts.manifest.get("splits", {})
    rows = []
    for name, split in sorted(splits.items(), key=lambda item: SPLIT_ORDER.get(item[0], 9)):
        counts = list(split.get("per_class", {}).values()) or [0]
        rows.append(
            [
                name,
                str(split.get("count", "?")),
                f"{min(counts)}–{max(counts)}",
                f"`{str(split.get('images_sha256', ''))[:16]}`",
            ]
        )
    return Section(
        "Data",
        [
            f"Source: {source.get('kind', '?')} `{source.get('name', '?')}` (sha256 "
            f"`{source.get('sha256', '?')}`). Manifest sha256 `{facts.manifest_sha256}`: it pins "
            "every image and label array below.",
            (["split", "images", "per class", "images sha256"], rows),
        ],
    )


def attempts_section(facts: CardFacts) -> Section:
    if not facts.attempts:
        return Section(
            "Training: the retrain loop",
            ["The loop's attempts were not recorded with this version."],
        )
    rows = [
        [
            str(a["index"]),
            f"`{a['rung']}`",
            figure(a["val_accuracy"]),
            figure(a["val_macro_f1"]),
            "passed" if a["passed"] else "failed",
            "; ".join(a.get("failures", [])) or "—",
        ]
        for a in facts.attempts
    ]
    return Section(
        "Training: the retrain loop",
        [
            "Each attempt trains the next rung of the ladder and is gated on the validation "
            "split; the first that passes is evaluated once on the test split.",
            (["attempt", "rung", "val accuracy", "val macro F1", "gate", "failed checks"], rows),
        ],
    )


def test_section(facts: CardFacts) -> Section:
    test = facts.test
    per_class = test.get("per_class", {})
    rows = [
        [
            name,
            figure(v.get("precision")),
            figure(v.get("recall")),
            figure(v.get("f1")),
            str(v.get("support", "")),
        ]
        for name, v in per_class.items()
    ]
    blocks: list[Block] = [
        f"Accuracy {accuracy_line(test)}; macro F1 {figure(test.get('macro_f1'))}; lowest "
        f"class recall {figure(test.get('min_class_recall'))}; expected calibration error "
        f"(ECE) {figure(test.get('ece'))}.",
        (["class", "precision", "recall", "F1", "images"], rows),
    ]
    confused = test.get("most_confused", [])[:3]
    if confused:
        blocks.append(
            "Most confused: "
            + "; ".join(f"{c['true']} read as {c['predicted']} ({c['count']})" for c in confused)
            + "."
        )
    reasons = facts.decision.get("reasons", [])
    if reasons:
        blocks.append("Final gate (test split): " + "; ".join(reasons) + ".")
    return Section("Test results", blocks)


def speed_section(facts: CardFacts) -> Section:
    latency = facts.test.get("latency", {})
    rows = [[key.replace("_", " "), figure(value)] for key, value in latency.items()]
    rows.append(["model size MB", figure(facts.test.get("model_size_mb"))])
    blocks: list[Block] = [
        "Measured by the evaluation on the machine that ran it.",
        (["figure", "value"], rows),
    ]
    if facts.engine:
        blocks += [
            "Serving engine (measured by the evaluation):",
            (["key", "value"], [[key, engine_value(value)] for key, value in facts.engine.items()]),
        ]
    return Section("Speed and size", blocks)


def engine_value(value) -> str:
    """An engine.json value on one line: a mapping as ``key value`` pairs."""
    if isinstance(value, dict):
        return "; ".join(f"{k} {engine_value(v)}" for k, v in value.items()) or "—"
    return figure(value)


def limits_section(facts: CardFacts) -> Section:
    test, lines = facts.test, []
    recalls = {name: v.get("recall", 0.0) for name, v in test.get("per_class", {}).items()}
    if recalls:
        weakest = min(recalls, key=recalls.__getitem__)
        lines.append(f"Weakest class: {weakest} (recall {figure(recalls[weakest])}).")
    confused = test.get("most_confused", [])
    if confused:
        lines.append(
            f"Its most frequent error reads {confused[0]['true']} as {confused[0]['predicted']}."
        )
    if test.get("ece") is not None:
        lines.append(
            f"Probabilities are calibrated to an ECE of {figure(test['ece'])}: "
            "treat them as scores, not exact chances."
        )
    lines.append(
        f"The test images come from the same source as the training images "
        f"({facts.manifest.get('source', {}).get('name', '?')}); expect lower "
        "accuracy on photos of another kind (size, lighting, framing)."
    )
    return Section("Known limits", ["\n".join(f"- {line}" for line in lines)])


def lineage_section(facts: CardFacts) -> Section:
    return Section(
        "Lineage",
        [(["key", "value"], [[key, f"`{value}`"] for key, value in sorted(facts.lineage.items())])],
    )


def sections(facts: CardFacts) -> list[Section]:
    """The card's sections, in reading order."""
    return [
        intended_use(facts),
        data_section(facts),
        attempts_section(facts),
        test_section(facts),
        speed_section(facts),
        limits_section(facts),
        lineage_section(facts),
    ]


def title(facts: CardFacts) -> str:
    return f"{facts.model_name} v{facts.version}: model card"


def card_markdown(facts: CardFacts, pictures: dict[str, str] | None = None) -> str:
    """The card as Markdown; ``pictures`` maps a caption to an image's path beside the card."""
    lines = [f"# {title(facts)}", "", summary(facts), ""]
    for section in sections(facts):
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [*markdown_block(block), ""]
    if pictures:
        lines += (
            ["## Pictures", ""]
            + [f"![{caption}]({path})" for caption, path in pictures.items()]
            + [""]
        )
    return "\n".join(lines)


def markdown_block(block: Block) -> list[str]:
    if isinstance(block, str):
        return [block]
    header, rows = block
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(c) for c in row) + " |" for row in rows
    ]


def card_description(facts: CardFacts) -> str:
    """The registry's description of the version: a few Markdown lines."""
    test, passed = facts.test, [a for a in facts.attempts if a["passed"]]
    loop = (
        f"{len(facts.attempts)} attempt(s), rung `{passed[0]['rung']}` passed the validation gate"
        if passed
        else "attempts not recorded"
    )
    return "\n".join(
        [
            summary(facts),
            "",
            f"- macro F1 {figure(test.get('macro_f1'))}, lowest class recall "
            f"{figure(test.get('min_class_recall'))}, ECE {figure(test.get('ece'))}",
            f"- data manifest sha256 `{facts.manifest_sha256[:16]}`; {loop}",
            "- full card: `model_card.html` / `model_card.md` in the version's run",
        ]
    )


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1b1f24;line-height:1.45}h1{font-size:1.6rem}h2{font-size:1.2rem;border-bottom:1px solid
#d0d7de;padding-bottom:.2rem;margin-top:1.6rem}table{border-collapse:collapse;margin:.4rem 0}
td,th{border:1px solid #d0d7de;padding:.2rem .6rem;text-align:left;font-size:.9rem}
th{background:#f6f8fa}code{background:#f6f8fa;padding:0 .2rem;font-size:.85rem;
white-space:nowrap}
figure{display:inline-block;margin:.5rem}img{max-width:28rem}"""


def inline_html(text: str) -> str:
    """Escaped text with the card's inline Markdown (``code`` and **bold**) as HTML."""
    parts = html.escape(text).split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    bold = out.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(bold))


def html_block(block: Block) -> str:
    if isinstance(block, str):
        if block.startswith("- "):
            items = [line.removeprefix("- ") for line in block.splitlines()]
            return "<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in items) + "</ul>"
        return f"<p>{inline_html(block)}</p>"
    header, rows = block
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{inline_html(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def card_html(facts: CardFacts, pictures: dict[str, bytes] | None = None) -> str:
    """The card as one HTML page; ``pictures`` (caption to PNG bytes) are inlined as data
    URIs, so the file is whole wherever it is opened."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(title(facts))}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title(facts))}</h1><p>{inline_html(summary(facts))}</p>",
    ]
    for section in sections(facts):
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [html_block(block) for block in section.blocks]
    if pictures:
        parts.append("<h2>Pictures</h2>")
        parts += [
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
            f"{base64.b64encode(data).decode()}'><figcaption>{html.escape(caption)}"
            "</figcaption></figure>"
            for caption, data in pictures.items()
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
