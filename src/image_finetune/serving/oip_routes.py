"""The Open Inference Protocol's routes (``/v2/...``): server and model metadata, readiness
and ``infer`` on a UINT8 tensor or on encoded files; the protocol's ``error`` on refusals
(its health probes answer in the app, outside the token)."""

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from image_finetune.serving import oip
from image_finetune.serving.feedback import REQUEST_ID_HEADER, new_request_id
from image_finetune.serving.reading import read_body
from image_finetune.serving.server import Server

INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor data extension",
            },
        },
    }
}
OIP = "open inference protocol"
OIP_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": oip.ErrorMessage} for status in (400, 401, 404, 413, 503)
}


def add_oip_metadata(router: APIRouter, server: Server) -> None:
    @router.get("/v2", response_model=oip.ServerMetadata, tags=[OIP])
    async def server_metadata():
        return oip.ServerMetadata(
            name="image-finetune", version="2", extensions=["binary_tensor_data"]
        )

    @router.get(
        "/v2/models/{name}", response_model=oip.ModelMetadata, responses=OIP_ERRORS, tags=[OIP]
    )
    @router.get(
        "/v2/models/{name}/versions/{version}",
        response_model=oip.ModelMetadata,
        responses=OIP_ERRORS,
        tags=[OIP],
    )
    async def model_metadata(name: str, version: str | None = None):
        model = server.model_named(name, version)
        return oip.model_metadata(
            name,
            model.version,
            model.input_size,
            len(model.class_names),
            model.engine,
            model.precision,
        )

    @router.get("/v2/models/{name}/ready", responses=OIP_ERRORS, tags=[OIP])
    @router.get("/v2/models/{name}/versions/{version}/ready", responses=OIP_ERRORS, tags=[OIP])
    async def model_ready(name: str, version: str | None = None) -> dict:
        server.model_named(name, version)
        return {"name": name, "ready": True}


def oip_tensor(
    body: bytes, header_length: str | None, size: int, max_images: int
) -> tuple[oip.InferRequest, np.ndarray | list[bytes]]:
    """An infer request and its images: pixels [N,size,size,3], or encoded files (run in the
    decode pool)."""
    request, binary = oip.parse_request(body, header_length)
    return request, oip.input_tensor(request, binary, size, max_images)


def add_oip_inference(router: APIRouter, server: Server) -> None:
    settings = server.settings

    @router.post(
        "/v2/models/{name}/infer",
        response_model=oip.InferResponse,
        responses=OIP_ERRORS,
        openapi_extra=INFER_BODY,
        tags=[OIP],
    )
    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=oip.InferResponse,
        responses=OIP_ERRORS,
        openapi_extra=INFER_BODY,
        tags=[OIP],
    )
    async def infer(name: str, request: Request, version: str | None = None):
        """Classify a UINT8 ``images`` tensor [N,S,S,3] or BYTES of encoded files [N]."""
        with server.batcher.request():
            model = server.model_named(name, version)
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
            parsed, images = await server.off_loop(
                oip_tensor,
                body,
                request.headers.get(oip.HEADER_LENGTH),
                model.input_size,
                settings.max_images,
            )
            del body  # its images are parsed out: free it before they are decoded
            if not isinstance(images, np.ndarray):
                images = await server.decode(
                    [(f"{oip.INPUT}[{i}]", data) for i, data in enumerate(images)],
                    model.input_size,
                    model.image_fit,
                )
            request_id = new_request_id()
            probabilities, model, role = await server.operations.classify(
                images, request_id, server.classify
            )
        server.operations.answered(request_id, images, None, probabilities, model, role)
        content, header_length = await server.off_loop(
            oip.infer_response, parsed, name, model.version, probabilities, model.class_names
        )
        if header_length is None:
            return Response(
                content, media_type="application/json", headers={REQUEST_ID_HEADER: request_id}
            )
        return Response(
            content,
            media_type="application/octet-stream",
            headers={oip.HEADER_LENGTH: str(header_length), REQUEST_ID_HEADER: request_id},
        )
