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
    data: list[Any] | None = Field(None, description="row-major, flat or nested; absent "
                                   "when the tensor travels as binary data")


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


def model_metadata(name: str, version: str, size: int, classes: int) -> ModelMetadata:
    return ModelMetadata(
        name=name, versions=[version], platform="keras",
        inputs=[TensorMetadata(name=INPUT, datatype="UINT8", shape=[-1, size, size, 3])],
        outputs=[TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, classes]),
                 TensorMetadata(name=LABELS, datatype="BYTES", shape=[-1])])


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


def input_tensor(request: InferRequest, binary: bytes, size: int) -> np.ndarray | list[bytes]:
    """The request's images: a uint8 array (UINT8) or encoded files (BYTES)."""
    tensor = request.inputs[0]
    if tensor.name != INPUT:
        raise Rejected(400, f"unknown input {tensor.name!r}: this model takes {INPUT!r}")
    raw = _binary_part(tensor, binary)
    if tensor.datatype == "UINT8":
        return _pixels(tensor, raw, size)
    if tensor.datatype == "BYTES":
        return _encoded_files(tensor, raw)
    raise Rejected(400, f"input {INPUT!r} takes UINT8 pixels or BYTES of PNG/JPEG files, "
                        f"not {tensor.datatype}")


def _binary_part(tensor: RequestInput, binary: bytes) -> bytes | None:
    size = (tensor.parameters or {}).get(BINARY_SIZE)
    if size is None:
        if tensor.data is None:
            raise Rejected(400, f"input {tensor.name!r} has neither data nor {BINARY_SIZE}")
        return None
    if not isinstance(size, int) or size < 0 or size != len(binary):
        raise Rejected(400, f"{BINARY_SIZE} {size!r} does not match the {len(binary)} "
                            "bytes after the JSON header")
    return binary


def _pixels(tensor: RequestInput, raw: bytes | None, size: int) -> np.ndarray:
    expected = [size, size, 3]
    if len(tensor.shape) != 4 or tensor.shape[1:] != expected or tensor.shape[0] < 1:
        raise Rejected(400, f"UINT8 input shape {tensor.shape}: expected [N, {size}, {size}, 3]")
    if raw is not None:
        values = np.frombuffer(raw, np.uint8)
    else:
        try:
            values = np.asarray(tensor.data, dtype=np.int64).ravel()
        except (ValueError, TypeError, OverflowError) as exc:
            raise Rejected(400, "UINT8 data must be integers (flat or nested)") from exc
        if values.size and (values.min() < 0 or values.max() > 255):
            raise Rejected(400, "UINT8 data out of range 0..255")
    if values.size != int(np.prod(tensor.shape)):
        raise Rejected(400, f"{values.size} values for shape {tensor.shape}")
    return values.astype(np.uint8, copy=False).reshape(tensor.shape)


def _encoded_files(tensor: RequestInput, raw: bytes | None) -> list[bytes]:
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise Rejected(400, f"BYTES input shape {tensor.shape}: expected [N]")
    files = _split_binary_bytes(raw) if raw is not None else [
        _from_base64(element) for element in np.asarray(tensor.data, dtype=object).ravel()]
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
        files.append(raw[offset:offset + length])
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
            raise Rejected(400, f"unknown output {output.name!r}: this model gives "
                                f"{PROBABILITIES!r} and {LABELS!r}")
        wanted[output.name] = bool((output.parameters or {}).get("binary_data",
                                                                  binary_default))
    return wanted


def output_tensors(probabilities: np.ndarray, class_names: list[str]) -> dict[str, tuple]:
    """Each output as (datatype, shape, flat values)."""
    labels = [class_names[i] for i in np.argmax(probabilities, axis=1)]
    return {PROBABILITIES: ("FP32", list(probabilities.shape),
                            probabilities.astype(np.float32)),
            LABELS: ("BYTES", [len(labels)], labels)}


def _binary(datatype: str, values) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def _json_values(datatype: str, values) -> list:
    return list(values) if datatype == "BYTES" else values.ravel().tolist()


def infer_response(request: InferRequest, model_name: str, version: str,
                   probabilities: np.ndarray, class_names: list[str]) -> tuple[bytes, int | None]:
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
    response = InferResponse(model_name=model_name, model_version=version, id=request.id,
                             outputs=outputs)
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
