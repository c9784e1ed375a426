"""The Open Inference Protocol's conversions on their own: requests to images (JSON and the
binary tensor data extension), results to responses, and the refusals in between."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from image_finetune.serving import oip
from image_finetune.serving.errors import Rejected


def request(tensor: dict, **fields) -> bytes:
    return json.dumps({"inputs": [{"name": "images", **tensor}], **fields}).encode()


def test_uint8_json_nested_and_flat_give_the_same_images():
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    for data in (pixels.tolist(), pixels.ravel().tolist()):
        parsed, binary = oip.parse_request(
            request({"datatype": "UINT8", "shape": [2, 4, 4, 3], "data": data}), None
        )
        np.testing.assert_array_equal(oip.input_tensor(parsed, binary, 4, 64), pixels)


def test_binary_uint8_and_bytes_follow_the_json_header():
    pixels = np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3)
    header = request(
        {"datatype": "UINT8", "shape": [1, 4, 4, 3], "parameters": {"binary_data_size": 48}}
    )
    parsed, binary = oip.parse_request(header + pixels.tobytes(), str(len(header)))
    np.testing.assert_array_equal(oip.input_tensor(parsed, binary, 4, 64), pixels)
    files = [b"first", b"second file"]
    raw = b"".join(struct.pack("<I", len(f)) + f for f in files)
    header = request(
        {"datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}}
    )
    parsed, binary = oip.parse_request(header + raw, str(len(header)))
    assert oip.input_tensor(parsed, binary, 4, 64) == files


def test_bytes_in_json_are_base64():
    parsed, binary = oip.parse_request(
        request(
            {"datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"\x89PNG").decode()]}
        ),
        None,
    )
    assert oip.input_tensor(parsed, binary, 4, 64) == [b"\x89PNG"]


@pytest.mark.parametrize(
    "body,header,message",
    [
        (b"[1, 2]", None, "not an inference request"),
        (
            request({"datatype": "FP32", "shape": [1, 4, 4, 3], "data": [0.5] * 48}),
            None,
            "not FP32",
        ),
        (
            request({"datatype": "UINT8", "shape": [1, 4, 4, 3], "data": ["a"] * 48}),
            None,
            "must be integers",
        ),
        (
            request({"datatype": "UINT8", "shape": [1, 4, 4, 3], "data": [[1, 2], [3]]}),
            None,
            "must be integers",
        ),
        (request({"datatype": "UINT8", "shape": [1, 4, 4, 3]}), None, "neither data nor"),
        (request({"datatype": "BYTES", "shape": [1], "data": [7]}), None, "must be strings"),
        (
            request({"datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 3}})
            + b"\x05\0\0",
            "header",
            "truncated",
        ),
        (
            request(
                {"datatype": "UINT8", "shape": [1, 4, 4, 3], "parameters": {"binary_data_size": 10}}
            )
            + b"\0" * 48,
            "header",
            "does not match",
        ),
        (b"{}", "x1", "does not fit"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(body, header, message):
    if header == "header":
        header = str(body.index(b"}]}") + 3)
    with pytest.raises(Rejected, match=message) as refused:
        parsed, binary = oip.parse_request(body, header)
        oip.input_tensor(parsed, binary, 4, 64)
    assert refused.value.status == 400


def test_responses_in_json_and_in_binary():
    probabilities = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    parsed, _ = oip.parse_request(
        request({"datatype": "UINT8", "shape": [2, 4, 4, 3], "data": [0] * 96}, id="r1"), None
    )
    body, header_length = oip.infer_response(parsed, "m", "3", probabilities, ["cat", "dog"])
    assert header_length is None
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outputs["labels"]["data"] == ["dog", "cat"]
    assert outputs["probabilities"]["data"] == probabilities.ravel().tolist()
    parsed.parameters = {"binary_data_output": True}
    parsed.outputs = [oip.RequestOutput(name="probabilities")]
    body, header_length = oip.infer_response(parsed, "m", "3", probabilities, ["cat", "dog"])
    [output] = json.loads(body[:header_length])["outputs"]
    assert output["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(
        np.frombuffer(body[header_length:], "<f4").reshape(2, 2), probabilities
    )
    parsed.outputs = [oip.RequestOutput(name="logits")]
    with pytest.raises(Rejected, match="unknown output 'logits'"):
        oip.infer_response(parsed, "m", "3", probabilities, ["cat", "dog"])


HUGE = 2**62  # np.prod of [2^62, 4, 4, 3] wraps to 0 in int64: an empty tensor passed


@pytest.mark.parametrize(
    "tensor,status,message",
    [
        ({"datatype": "UINT8", "shape": [HUGE, 4, 4, 3], "data": []}, 413, "too many images"),
        (
            {"datatype": "UINT8", "shape": [HUGE, 4, 4, 3], "parameters": {"binary_data_size": 0}},
            413,
            "too many images",
        ),
        ({"datatype": "BYTES", "shape": [HUGE], "data": []}, 413, "too many images"),
        (
            {"datatype": "UINT8", "shape": [65, 4, 4, 3], "data": [0] * 65 * 48},
            413,
            "too many images",
        ),
        ({"datatype": "UINT8", "shape": [1, HUGE, HUGE, 3], "data": []}, 400, "expected [N, 4"),
        ({"datatype": "UINT8", "shape": [0, 4, 4, 3], "data": []}, 400, "expected [N, 4"),
        ({"datatype": "UINT8", "shape": [-1, 4, 4, 3], "data": []}, 400, "expected [N, 4"),
    ],
)
def test_declared_shapes_are_checked_before_any_tensor_is_built(tensor, status, message):
    header = request(tensor)
    length = str(len(header)) if "parameters" in tensor else None
    parsed, binary = oip.parse_request(header, length)
    with pytest.raises(Rejected) as refused:
        oip.input_tensor(parsed, binary, 4, 64)
    assert (refused.value.status, message in refused.value.message) == (status, True), (
        refused.value.message
    )


@pytest.mark.parametrize(
    "values,kind",
    [
        ([0.5] * 48, "float"),
        ([1.0] * 48, "float"),
        ([True] * 48, "bool"),
        ([1] * 47 + [False], "bool"),
        ([1] * 47 + [None], "NoneType"),
        ([1] * 47 + [[1]], "list"),
        ([[[[1, 2, 3]] * 4] * 3 + [[[1.5, 2, 3]] * 4]], "float"),
    ],
)
def test_uint8_data_must_be_integers_not_floats_or_booleans(values, kind):
    parsed, binary = oip.parse_request(
        request({"datatype": "UINT8", "shape": [1, 4, 4, 3], "data": values}), None
    )
    with pytest.raises(Rejected, match=f"must be integers 0..255, not {kind}") as refused:
        oip.input_tensor(parsed, binary, 4, 64)
    assert refused.value.status == 400


@pytest.mark.parametrize("values", [[256] * 48, [-1] * 48, [2**70] * 48])
def test_uint8_data_out_of_range_is_refused(values):
    parsed, binary = oip.parse_request(
        request({"datatype": "UINT8", "shape": [1, 4, 4, 3], "data": values}), None
    )
    with pytest.raises(Rejected, match="out of range 0..255"):
        oip.input_tensor(parsed, binary, 4, 64)
