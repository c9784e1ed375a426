"""The ``serve`` step: the HTTP service over ``models:/<name>@<alias>``. Configured by
ServeSettings (flags and environment variables), not params.yaml: the server starts from an
empty working directory, and stays up, unready, while the registry cannot be reached."""

from __future__ import annotations

from image_finetune.errors import ConfigError
from image_finetune.serving.probe_process import ProbeProcess
from image_finetune.serving.settings import ServeSettings, check_exposure


def serve_champion(
    settings: ServeSettings, host: str, port: int, no_auth: bool = False, access_log: bool = False
) -> None:
    """Serve the registry's model until SIGTERM/SIGINT (in-flight requests are finished)."""
    check_exposure(host, settings, no_auth)
    probes = None
    if settings.probe_port is not None:
        if settings.probe_port == port != 0:
            raise ConfigError(f"--probe-port {port} is the application's --port: choose another")
        probes = ProbeProcess(host, settings.probe_port, settings.loop_stall_seconds)
        probes.start()
    # Imported here, while the probe process starts beside us.
    import uvicorn

    from image_finetune.serving.app import create_app
    from image_finetune.steps.http_protocol import guarded_protocol

    app = create_app(settings, probes=probes)
    if probes is not None:
        try:
            probes.wait_listening()
        except OSError as exc:
            raise ConfigError(f"--probe-port {settings.probe_port}: {exc}") from exc
    # One process: the micro-batcher needs every request in one queue to batch them. The
    # request limit is the app's (RequestLimit: the probes apart), not uvicorn's
    # limit_concurrency, which counts the probes and every idle connection.
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            access_log=access_log,
            timeout_graceful_shutdown=20,
            http=guarded_protocol(settings.header_timeout_seconds, settings.max_header_bytes),
        )
    finally:
        if probes is not None:
            probes.stop()
