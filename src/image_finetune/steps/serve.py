"""The ``serve`` step: the HTTP service over ``models:/<name>@<alias>``."""

from __future__ import annotations

from image_finetune.config import Params
from image_finetune.serve import ServeSettings, create_app


def serve_champion(params: Params, host: str, port: int, **limits) -> None:
    """Serve the registry's model until stopped; ``limits`` are ServeSettings fields
    (alias, poll_seconds, max_batch, max_image_bytes, top_k)."""
    import uvicorn

    settings = ServeSettings(model_name=params.registry.model_name,
                             tracking_uri=params.registry.tracking_uri, **limits)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
