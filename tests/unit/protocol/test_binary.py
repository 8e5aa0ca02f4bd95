"""Triton's binary tensor framing: every size is checked against the header, the body and the shape."""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlserver_torchflow.errors import BadRequest, InvalidInput
from mlserver_torchflow.protocol import binary


def framed(inputs: list[dict], *buffers: bytes, **extra: object) -> tuple[bytes, str]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + b"".join(buffers), str(len(header))


def spec(name: str, shape: list[int], datatype: str, size: int) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}


def parse(body: bytes, declared: str) -> dict:
    """The request with each binary input's slice put in its `data`, as the REST route does after validation."""
    header, rest = binary.split_body(body, declared)
    request, chunks = binary.attach(header, rest)
    for index, chunk in chunks.items():
        assert request["inputs"][index]["data"] == []  # a placeholder until validation is done
        request["inputs"][index]["data"] = chunk
    return request


def test_two_inputs_are_sliced_in_order_without_copies() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[7], [9]], dtype=np.int64)
    body, declared = framed(
        [spec("a", [2, 3], "FP32", a.nbytes), spec("b", [2, 1], "INT64", b.nbytes)], a.tobytes(), b.tobytes()
    )
    request = parse(body, declared)
    first, second = (inp["data"] for inp in request["inputs"])
    assert isinstance(first, memoryview) and first.obj is body  # a view of the body, not a copy
    np.testing.assert_array_equal(np.frombuffer(first, np.float32).reshape(2, 3), a)
    np.testing.assert_array_equal(np.frombuffer(second, np.int64).reshape(2, 1), b)


def test_json_and_binary_inputs_mix() -> None:
    x = np.ones(4, dtype=np.float32)
    body, declared = framed(
        [{"name": "j", "shape": [1], "datatype": "INT32", "data": [5]}, spec("x", [4], "FP32", 16)],
        x.tobytes(),
    )
    request = parse(body, declared)
    assert request["inputs"][0]["data"] == [5]
    assert bytes(request["inputs"][1]["data"]) == x.tobytes()


@pytest.mark.parametrize(
    ("declared", "words"),
    [("12x", "non-negative integer"), ("-1", "non-negative integer"), ("999999", "only")],
)
def test_a_lying_header_length_is_a_400(declared: str, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        binary.split_body(b'{"inputs": []}', declared)


def test_a_header_length_that_cuts_the_json_is_a_400() -> None:
    body, declared = framed([spec("x", [1], "FP32", 4)], b"\0" * 4)
    with pytest.raises(BadRequest, match="not a JSON object"):
        binary.split_body(body, str(int(declared) - 3))


@pytest.mark.parametrize(
    ("inputs", "payload", "words"),
    [
        ([spec("x", [2, 2], "FP32", 12)], b"\0" * 12, "holds 4 FP32 values \\(16 bytes\\)"),
        ([spec("x", [1], "FP32", 8)], b"\0" * 4, "only 4 bytes"),
        ([spec("x", [1], "FP32", 4)], b"\0" * 8, "add up to 4"),
        ([spec("x", [1], "FP32", -4)], b"", "non-negative integer"),
        ([spec("x", [1], "FP32", True)], b"", "non-negative integer"),
        ([{**spec("x", [1], "FP32", 4), "data": [1.0]}], b"\0" * 4, "both data and"),
        ([spec("x", [1], "COMPLEX", 4)], b"\0" * 4, "cannot be sent as binary"),
        ([spec("x", "abc", "FP32", 4)], b"\0" * 4, "shape must be a list"),
    ],
)
def test_sizes_that_do_not_add_up_are_a_400_naming_the_input(
    inputs: list[dict], payload: bytes, words: str
) -> None:
    body, declared = framed(inputs, payload)
    with pytest.raises(InvalidInput, match=words) as info:
        parse(body, declared)
    assert "'x'" in str(info.value) or "add up" in words


def test_a_huge_declared_shape_is_refused_before_any_allocation() -> None:
    body, declared = framed([spec("x", [2**40, 2**20], "FP32", 4)], b"\0" * 4)
    with pytest.raises(InvalidInput, match="bytes\\), but binary_data_size is 4"):
        parse(body, declared)


def test_bytes_elements_are_length_prefixed() -> None:
    items = [b"ab", b"", b"xyz"]
    raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    body, declared = framed([spec("s", [3], "BYTES", len(raw))], raw)
    request = parse(body, declared)
    assert binary.as_list(request["inputs"][0]["data"], "BYTES", "s") == items
    lying = struct.pack("<I", 100) + b"ab"
    body, declared = framed([spec("s", [1], "BYTES", len(lying))], lying)
    with pytest.raises(InvalidInput, match="past the end"):
        parse(body, declared)


def test_outputs_go_binary_as_each_asks_and_the_header_says_where_json_ends() -> None:
    request = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    }
    default, chosen = binary.binary_outputs(request)
    assert (default, chosen) == (True, {"b": False})
    response = {
        "model_name": "m",
        "outputs": [
            {"name": "a", "shape": [2], "datatype": "FP16", "data": [1.5, -2.0]},
            {"name": "b", "shape": [1], "datatype": "INT64", "data": [3]},
        ],
    }
    body, size = binary.encode_response(response, default, chosen)
    assert size is not None
    header = orjson.loads(body[:size])
    a, b = header["outputs"]
    assert a["parameters"] == {"binary_data_size": 4} and "data" not in a
    assert b["data"] == [3]
    np.testing.assert_array_equal(np.frombuffer(body[size:], np.float16), [1.5, -2.0])


def test_json_stays_the_answer_to_json() -> None:
    response = {
        "model_name": "m",
        "outputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}],
    }
    body, size = binary.encode_response(response, False, {})
    assert size is None and orjson.loads(body) == response


_TENSOR = st.fixed_dictionaries(
    {
        "name": st.text(max_size=4),
        "shape": st.one_of(st.lists(st.integers(-3, 2**62), max_size=4), st.text(max_size=3), st.none()),
        "datatype": st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "BF16", 7]),
        "parameters": st.fixed_dictionaries(
            {
                "binary_data_size": st.one_of(
                    st.integers(-5, 64), st.floats(), st.text(max_size=3), st.booleans()
                )
            }
        ),
    }
)


@settings(max_examples=400, deadline=None)
@given(inputs=st.lists(_TENSOR, max_size=3), tail=st.binary(max_size=96), shift=st.integers(-8, 8))
def test_any_framing_is_parsed_or_refused_as_a_client_error(
    inputs: list[dict], tail: bytes, shift: int
) -> None:
    header = json.dumps({"inputs": inputs}).encode()
    body = header + tail
    try:
        request = parse(body, str(max(0, len(header) + shift)))
    except BadRequest:
        return
    for inp in request["inputs"]:  # what was accepted is exactly the declared bytes
        if isinstance(inp.get("data"), memoryview):
            assert len(inp["data"]) == inp["parameters"]["binary_data_size"]
