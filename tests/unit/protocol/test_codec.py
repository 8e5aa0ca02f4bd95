"""V2 inputs to arrays: every check that turns a bad request into a 400."""

from __future__ import annotations

import numpy as np
import pytest
from mlserver.types import InferenceRequest, RequestInput, TensorData

from mlserver_torchflow.errors import InvalidInput
from mlserver_torchflow.protocol.codec import cast_allowed, decode_request
from mlserver_torchflow.protocol.outputs import response_outputs, select_outputs
from mlserver_torchflow.protocol.signature import Interface, TensorSpec, interface_from_mlmodel

SINGLE = Interface(
    inputs=(TensorSpec("input-0", "FP32", (-1, 4)),), outputs=(TensorSpec("output-0", "FP32", (-1, 3)),)
)


def request(*inputs: RequestInput) -> InferenceRequest:
    return InferenceRequest(inputs=list(inputs))


def test_json_data_nested_or_flat() -> None:
    for data in ([1, 2, 3, 4, 5, 6, 7, 8], [[1, 2, 3, 4], [5, 6, 7, 8]]):
        (array,) = decode_request(
            request(RequestInput(name="input-0", datatype="FP32", shape=[2, 4], data=data)), SINGLE
        )
        assert array.dtype == np.float32 and array.shape == (2, 4) and array[1, 3] == 8


def test_raw_bytes_decode_without_lists() -> None:
    values = np.arange(8, dtype=np.float32)
    inp = RequestInput.model_construct(
        name="input-0", datatype="FP32", shape=[2, 4], data=TensorData.model_construct(root=values.tobytes())
    )
    (array,) = decode_request(request(inp), SINGLE)
    np.testing.assert_array_equal(array.ravel(), values)
    assert array.flags.writeable


def test_raw_bytes_of_the_wrong_size() -> None:
    inp = RequestInput.model_construct(
        name="input-0", datatype="FP32", shape=[2, 4], data=TensorData.model_construct(root=b"\0" * 31)
    )
    with pytest.raises(InvalidInput, match="32 bytes.*31 bytes"):
        decode_request(request(inp), SINGLE)


@pytest.mark.parametrize(
    ("got", "expected", "allowed"),
    [
        ("FP64", "FP32", True),
        ("FP16", "FP32", True),
        ("INT32", "INT64", True),
        ("UINT8", "FP32", True),
        ("INT64", "INT32", False),
        ("INT64", "FP32", False),
        ("FP32", "INT64", False),
        ("BOOL", "INT8", True),
    ],
)
def test_cast_rules(got: str, expected: str, allowed: bool) -> None:
    from mlserver_torchflow.protocol.signature import V2_TO_NUMPY

    assert cast_allowed(V2_TO_NUMPY[got], V2_TO_NUMPY[expected]) is allowed


def test_allowed_cast_delivers_the_signature_dtype() -> None:
    inp = RequestInput(name="input-0", datatype="FP64", shape=[1, 4], data=[0.1, 0.2, 0.3, 0.4])
    (array,) = decode_request(request(inp), SINGLE)
    assert array.dtype == np.float32


def test_bool_data_for_a_number_and_floats_for_bool() -> None:
    spec = Interface(inputs=(TensorSpec("m", "BOOL", (-1,)),), outputs=None)
    with pytest.raises(InvalidInput, match="booleans"):
        decode_request(request(RequestInput(name="m", datatype="BOOL", shape=[2], data=[0.5, 1.0])), spec)
    (ok,) = decode_request(
        request(RequestInput(name="m", datatype="BOOL", shape=[2], data=[True, False])), spec
    )
    assert ok.dtype == np.bool_ and ok.tolist() == [True, False]


def test_no_signature_keeps_request_order_and_dtype() -> None:
    free = Interface(inputs=None, outputs=None)
    a = RequestInput(name="b", datatype="INT32", shape=[2], data=[1, 2])
    c = RequestInput(name="a", datatype="FP16", shape=[1], data=[1.5])
    first, second = decode_request(request(a, c), free)
    assert first.dtype == np.int32 and second.dtype == np.float16


def test_column_rows_must_agree() -> None:
    cols = Interface(
        inputs=(TensorSpec("a", "FP64", (-1,)), TensorSpec("b", "INT64", (-1,))), outputs=None, columns=True
    )
    (table,) = decode_request(
        request(
            RequestInput(name="b", datatype="INT64", shape=[2], data=[3, 4]),
            RequestInput(name="a", datatype="FP64", shape=[2], data=[1.5, 2.5]),
        ),
        cols,
    )
    assert table.dtype == np.float64 and table.tolist() == [[1.5, 3], [2.5, 4]]
    with pytest.raises(InvalidInput, match="same number of rows"):
        decode_request(
            request(
                RequestInput(name="a", datatype="FP64", shape=[2], data=[1, 2]),
                RequestInput(name="b", datatype="INT64", shape=[3], data=[1, 2, 3]),
            ),
            cols,
        )


def test_output_names_dict_signature_and_default() -> None:
    two = Interface(inputs=None, outputs=(TensorSpec("p", "FP32", None), TensorSpec("q", "FP32", None)))
    assert two.output_names({"z": 1, "y": 2}) == ["z", "y"]
    assert two.output_names((1, 2)) == ["p", "q"]
    assert two.output_names((1, 2, 3)) == ["output-0", "output-1", "output-2"]
    assert Interface(inputs=None, outputs=None).output_names(1) == ["output-0"]


def test_outputs_take_the_signature_dtype() -> None:
    (out,) = response_outputs(select_outputs([("output-0", np.ones((2, 3), np.float16))], SINGLE, None))
    assert out.datatype == "FP32" and out.shape == [2, 3]


def test_signature_parsing_of_tensor_and_column_specs() -> None:
    mlmodel = {
        "signature": {
            "inputs": '[{"type": "double", "name": "a"}, {"type": "long", "name": "b"}]',
            "outputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]',
        }
    }
    interface = interface_from_mlmodel(mlmodel)
    assert interface.columns and [s.datatype for s in interface.inputs or ()] == ["FP64", "INT64"]
    assert interface.outputs == (TensorSpec("output-0", "FP32", (-1, 3)),)


def test_string_signature_is_refused_at_load() -> None:
    from mlserver_torchflow.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="'text'.*not a number"):
        interface_from_mlmodel({"signature": {"inputs": '[{"type": "string", "name": "text"}]'}})
