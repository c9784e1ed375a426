"""The simple API: ``POST /predict`` (one raw image, or multipart ``files``: top-k classes)
and ``GET /metadata``, with FastAPI's ``detail`` on refusals."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from image_finetune.inference import top_k
from image_finetune.serving.errors import Rejected
from image_finetune.serving.feedback import REQUEST_ID_HEADER, new_request_id
from image_finetune.serving.reading import media_type, read_body, read_multipart_images
from image_finetune.serving.server import Server
from image_finetune.serving.settings import ServeSettings

IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class FilePrediction(BaseModel):
    file: str
    top_k: list[ClassProbability]


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    request_id: str = Field(description="for POST /feedback (also the X-Request-Id header)")
    predictions: list[FilePrediction]


class ModelInfo(BaseModel):
    model_name: str
    alias: str
    model_version: str
    class_names: list[str]
    input_shape: list[int]
    input_dtype: str
    image_fit: str = Field(
        description="how images of another size are fitted: resize "
        "(stretched) or center_crop (aspect ratio kept)"
    )
    engine: str = Field(
        description="what computes the answers: tensorflow (Keras), onnxruntime or openvino"
    )
    precision: str = Field(
        description="fp32, or int8 where the version's int8 variant passed its accuracy rule"
    )
    loaded_at: float
    max_images: int
    max_image_bytes: int
    max_pixels: int


class Detail(BaseModel):
    detail: str


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
        },
    }
}


async def read_images(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: one raw image body, or multipart ``files``."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        return await read_multipart_images(request, settings)
    if kind in IMAGE_TYPES:
        return [
            (
                "body",
                await read_body(request, settings.max_image_bytes, settings.body_timeout_seconds),
            )
        ]
    raise Rejected(
        415,
        f"unsupported content type {kind or '(none)'!r}: send image/png, "
        "image/jpeg, or multipart/form-data with one or more 'files'",
    )


def add_simple_api(router: APIRouter, server: Server) -> None:
    settings = server.settings
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": Detail} for status in (400, 401, 408, 413, 415, 503)
    }

    @router.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra=PREDICT_BODY,
        responses=errors,
        tags=["simple API"],
    )
    async def predict(
        request: Request, response: Response, k: Annotated[int | None, Query(ge=1, le=100)] = None
    ):
        """Classify one image (the body) or several (multipart ``files``): top-k classes."""
        request_id = response.headers[REQUEST_ID_HEADER] = new_request_id()
        with server.batcher.request():
            model = server.model()
            files = await read_images(request, settings)
            images = await server.decode(files, model.input_size, model.image_fit)
            probabilities, model, role = await server.operations.classify(
                images, request_id, server.classify
            )
        server.operations.answered(
            request_id, images, [data for _, data in files], probabilities, model, role
        )
        best = top_k(probabilities, model.class_names, k or settings.top_k)
        return {
            "model_name": settings.model_name,
            "model_version": model.version,
            "request_id": request_id,
            "predictions": [
                {"file": name, "top_k": b} for (name, _), b in zip(files, best, strict=True)
            ],
        }

    @router.get("/metadata", response_model=ModelInfo, responses=errors, tags=["simple API"])
    async def metadata():
        """The model served: version, classes, input, and the request limits."""
        model = server.model()
        return ModelInfo(
            model_name=settings.model_name,
            alias=settings.alias,
            model_version=model.version,
            class_names=model.class_names,
            input_shape=[model.input_size] * 2 + [3],
            input_dtype="uint8",
            image_fit=model.image_fit,
            engine=model.engine,
            precision=model.precision,
            loaded_at=model.loaded_at,
            max_images=settings.max_images,
            max_image_bytes=settings.max_image_bytes,
            max_pixels=settings.max_pixels,
        )
