"""The ``record-status`` step: how a pipeline run ended (Kubeflow's exit handler)."""

from __future__ import annotations

from pathlib import Path


def record_status(state: str, run: str, error: str, out: Path) -> dict:
    """Write the run's final state and, if it failed, the error, as Markdown to ``out``."""
    facts = {"state": state, "run": run, "error": error or ""}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# Pipeline {state}\n\n" + "\n".join(f"- {k}: {v}" for k, v in facts.items()) + "\n"
    )
    return facts
