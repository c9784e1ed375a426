"""The Open Inference Protocol (KServe v2 REST, as Triton and MLServer speak it): its
messages as models, and the conversions between tensors and the model's images.

The model takes one input, ``images``: UINT8 ``[N,S,S,3]`` pixels, or BYTES ``[N]`` of
encoded PNG/JPEG files (base64 strings in JSON, raw in binary). It gives ``probabilities``
(FP32 ``[N,C]``) and ``labels`` (BYTES ``[N]``, the most probable class). Tensor data may
come as JSON or with the binary tensor data extension (``Inference-Header-Content-Length``,
``binary_data_size``), which Triton's clients use by default.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from image_finetune.serving.errors import Rejected

INPUT = "images"
PROBABILITIES, LABELS = "probabilities", "labels"
HEADER_LENGTH = "inference-header-content-length"
BINARY_SIZE = "binary_data_size"


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # An extension of the protocol's metadata (as Triton adds its own fields): what computes
    # the answers and at which precision.
    parameters: dict[str, str] = Field(default_factory=dict)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ErrorMessage(BaseModel):
    error: str


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        None, description="row-major, flat or nested; absent when the tensor travels as binary data"
    )


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


# The platform names Triton and KServe give these runtimes (Keras keeps its own).
PLATFORMS = {"tensorflow": "keras", "onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}


def model_metadata(
    name: str, version: str, size: int, classes: int, engine: str, precision: str
) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        versions=[version],
        platform=PLATFORMS.get(engine, engine),
        parameters={"engine": engine, "precision": precision},
        inputs=[TensorMetadata(name=INPUT, datatype="UINT8", shape=[-1, size, size, 3])],
        outputs=[
            TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, classes]),
            TensorMetadata(name=LABELS, datatype="BYTES", shape=[-1]),
        ],
    )


# -- requests --------------------------------------------------------------------------------


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request and the binary data that follows its JSON header (b"" without)."""
    length = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise Rejected(400, f"{HEADER_LENGTH} {header_length!r} does not fit the body")
        length = int(header_length)
    try:
        request = InferRequest.model_validate_json(body[:length])
    except ValidationError as exc:
        raise Rejected(400, f"not an inference request: {_first_error(exc)}") from exc
    return request, body[length:]


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def input_tensor(
    request: InferRequest, binary: bytes, size: int, max_images: int
) -> np.ndarray | list[bytes]:
    """The request's images: a uint8 array (UINT8) or encoded files (BYTES). The declared
    shape and image count are checked before anything is built from the data."""
    tensor = request.inputs[0]
    if tensor.name != INPUT:
        raise Rejected(400, f"unknown input {tensor.name!r}: this model takes {INPUT!r}")
    raw = _binary_part(tensor, binary)
    if tensor.datatype == "UINT8":
        _check_shape(tensor.shape, [size, size, 3], f"[N, {size}, {size}, 3]", max_images)
        return _pixels(tensor, raw)
    if tensor.datatype == "BYTES":
        _check_shape(tensor.shape, [], "[N]", max_images)
        return _encoded_files(tensor, raw)
    raise Rejected(
        400, f"input {INPUT!r} takes UINT8 pixels or BYTES of PNG/JPEG files, not {tensor.datatype}"
    )


def _check_shape(shape: list[int], inner: list[int], expected: str, max_images: int) -> None:
    """``shape`` is [N, *inner] with 1 <= N <= max_images (Python ints: nothing wraps)."""
    if len(shape) != len(inner) + 1 or shape[1:] != inner or shape[0] < 1:
        kind = "BYTES" if not inner else "UINT8"
        raise Rejected(400, f"{kind} input shape {shape}: expected {expected}")
    if shape[0] > max_images:
        raise Rejected(
            413, f"too many images: {shape[0]} declared, at most {max_images} per request"
        )


def _listed(tensor: RequestInput) -> list:
    """The tensor's ``data``: a tensor without binary data has it, else it is refused."""
    if tensor.data is None:
        raise Rejected(400, f"input {tensor.name!r} has neither data nor {BINARY_SIZE}")
    return tensor.data


def _binary_part(tensor: RequestInput, binary: bytes) -> bytes | None:
    size = (tensor.parameters or {}).get(BINARY_SIZE)
    if size is None:
        _listed(tensor)  # refused here when it has neither
        return None
    if type(size) is not int or size < 0 or size != len(binary):
        raise Rejected(
            400,
            f"{BINARY_SIZE} {size!r} does not match the {len(binary)} bytes after the JSON header",
        )
    return binary


def _pixels(tensor: RequestInput, raw: bytes | None) -> np.ndarray:
    expected = math.prod(tensor.shape)
    if raw is not None:
        if len(raw) != expected:
            raise Rejected(400, f"{len(raw)} values for shape {tensor.shape}")
        return np.frombuffer(raw, np.uint8).reshape(tensor.shape)
    values = _flat(_listed(tensor), tensor.shape)
    if len(values) != expected:
        raise Rejected(400, f"{len(values)} values for shape {tensor.shape}")
    kinds = set(map(type, values))
    if kinds - {int}:  # bool is not int here: True is not a pixel value
        names = ", ".join(sorted(kind.__name__ for kind in kinds - {int}))
        raise Rejected(400, f"UINT8 data must be integers 0..255, not {names}")
    if min(values) < 0 or max(values) > 255:
        raise Rejected(400, "UINT8 data out of range 0..255")
    return np.array(values, dtype=np.uint8).reshape(tensor.shape)


def _flat(data: list, shape: list[int]) -> list:
    """The values row-major: ``data`` flat, or nested exactly as ``shape`` (each level's
    lists as long as its dimension, checked before the next level is built). Whether a level
    is nested is told by its first element: a list among flat values is refused as a value."""
    flat = data
    for dimension in shape[1:]:
        if not flat or not isinstance(flat[0], list):
            return flat
        if not all(isinstance(value, list) and len(value) == dimension for value in flat):
            raise Rejected(400, f"UINT8 data must be integers, flat or nested as the shape {shape}")
        flat = [item for value in flat for item in value]
    return flat


def _encoded_files(tensor: RequestInput, raw: bytes | None) -> list[bytes]:
    if raw is not None:
        files = _split_binary_bytes(raw)
    else:
        data = _listed(tensor)
        if len(data) != tensor.shape[0]:
            raise Rejected(400, f"{len(data)} elements for shape {tensor.shape}")
        files = [_from_base64(element) for element in data]
    if len(files) != tensor.shape[0]:
        raise Rejected(400, f"{len(files)} elements for shape {tensor.shape}")
    return files


def _from_base64(element) -> bytes:
    if not isinstance(element, str):
        raise Rejected(400, "BYTES elements must be strings (base64 of a PNG or JPEG file)")
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(400, "BYTES elements must be base64 of a PNG or JPEG file") from exc


def _split_binary_bytes(raw: bytes) -> list[bytes]:
    """Binary BYTES elements: each a 4-byte little-endian length, then its bytes."""
    files, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise Rejected(400, "binary BYTES data is truncated")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise Rejected(400, "binary BYTES data is truncated")
        files.append(raw[offset : offset + length])
        offset += length
    return files


# -- responses -------------------------------------------------------------------------------


def requested_outputs(request: InferRequest) -> dict[str, bool]:
    """The outputs asked for (default: all), each with whether it travels as binary."""
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        return {PROBABILITIES: binary_default, LABELS: binary_default}
    wanted = {}
    for output in request.outputs:
        if output.name not in (PROBABILITIES, LABELS):
            raise Rejected(
                400,
                f"unknown output {output.name!r}: this model gives "
                f"{PROBABILITIES!r} and {LABELS!r}",
            )
        wanted[output.name] = bool((output.parameters or {}).get("binary_data", binary_default))
    return wanted


def output_tensors(probabilities: np.ndarray, class_names: list[str]) -> dict[str, tuple]:
    """Each output as (datatype, shape, flat values)."""
    labels = [class_names[i] for i in np.argmax(probabilities, axis=1)]
    return {
        PROBABILITIES: ("FP32", list(probabilities.shape), probabilities.astype(np.float32)),
        LABELS: ("BYTES", [len(labels)], labels),
    }


def _binary(datatype: str, values) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def _json_values(datatype: str, values) -> list:
    return list(values) if datatype == "BYTES" else values.ravel().tolist()


def infer_response(
    request: InferRequest,
    model_name: str,
    version: str,
    probabilities: np.ndarray,
    class_names: list[str],
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header where binary data follows."""
    tensors = output_tensors(probabilities, class_names)
    outputs, blobs = [], []
    for name, binary in requested_outputs(request).items():
        datatype, shape, values = tensors[name]
        output = ResponseOutput(name=name, shape=shape, datatype=datatype)
        if binary:
            blobs.append(_binary(datatype, values))
            output.parameters = {BINARY_SIZE: len(blobs[-1])}
        else:
            output.data = _json_values(datatype, values)
        outputs.append(output)
    response = InferResponse(
        model_name=model_name, model_version=version, id=request.id, outputs=outputs
    )
    header = response.model_dump_json(exclude_none=True).encode()
    return (header + b"".join(blobs), len(header) if blobs else None)


def json_schema_components(*models: type[BaseModel]) -> dict[str, dict]:
    """OpenAPI component schemas for these models and the models they contain."""
    components = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components
