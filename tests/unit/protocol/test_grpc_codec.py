"""The gRPC lane's codec against MLServer's converters: the same response message, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferResponseConverter
from mlserver.types import InferenceResponse

from mlserver_torchflow.errors import InvalidInput
from mlserver_torchflow.protocol.grpc_codec import read_request, write_response
from mlserver_torchflow.protocol.outputs import response_outputs
from mlserver_torchflow.protocol.signature import V2_TO_NUMPY

InputTensor = pb.ModelInferRequest.InferInputTensor


def outputs_of(datatype: str, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    dtype = V2_TO_NUMPY[datatype]
    values = rng.integers(0, 2, (3, 2)) if dtype.kind == "b" else rng.integers(-100, 100, (3, 2))
    scaled = values * 0.37 if dtype.kind == "f" else values
    return [("out", scaled.astype(dtype)), ("second", (np.arange(4) % 2).astype(dtype).reshape(4, 1))]


def mlservers(outputs: list[tuple[str, np.ndarray]], raw: bool, version: str | None) -> pb.ModelInferResponse:
    response = InferenceResponse.model_construct(
        model_name="m", model_version=version, id="r-1", parameters=None, outputs=response_outputs(outputs)
    )
    return ModelInferResponseConverter.from_types(response, use_raw=raw)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "contents"])
@pytest.mark.parametrize("datatype", sorted(set(V2_TO_NUMPY) - {"FP16"}))
def test_the_response_is_mlservers_byte_for_byte(datatype: str, raw: bool) -> None:
    outputs = outputs_of(datatype, 7)
    for version in (None, "3"):
        ours = write_response("m", version, "r-1", outputs, raw)
        assert ours.SerializeToString() == mlservers(outputs, raw, version).SerializeToString()
    if raw:
        assert np.frombuffer(ours.raw_output_contents[0], V2_TO_NUMPY[datatype]).tolist() == (
            outputs[0][1].ravel().tolist()
        )


def test_fp16_is_written_raw_where_mlservers_converter_fails() -> None:
    outputs = outputs_of("FP16", 3)
    with pytest.raises(TypeError):
        mlservers(outputs, raw=False, version=None)
    ours = write_response("m", None, "r-1", outputs, raw=False)
    assert [t.datatype for t in ours.outputs] == ["FP16", "FP16"]
    decoded = np.frombuffer(ours.raw_output_contents[0], np.float16).reshape(3, 2)
    assert np.array_equal(decoded, outputs[0][1])


def test_the_request_pairs_raw_buffers_with_the_inputs_sent_without_contents() -> None:
    x = np.arange(8, dtype=np.float32)
    message = pb.ModelInferRequest(
        model_name="m",
        id="abc",
        inputs=[
            InputTensor(name="a", datatype="FP32", shape=[2, 4]),
            InputTensor(
                name="b", datatype="INT64", shape=[2], contents=pb.InferTensorContents(int64_contents=[5, 6])
            ),
            InputTensor(name="c", datatype="FP32", shape=[2, 4]),
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")],
        raw_input_contents=[x.tobytes(), (x * 2).tobytes()],
    )
    message.parameters["priority"].int64_param = 2
    request = read_request(message)
    assert request.id == "abc" and [o.name for o in request.outputs] == ["y"]
    assert [(t.name, t.shape, t.datatype) for t in request.inputs] == [
        ("a", [2, 4], "FP32"),
        ("b", [2], "INT64"),
        ("c", [2, 4], "FP32"),
    ]
    assert request.inputs[0].data == x.tobytes() and request.inputs[2].data == (x * 2).tobytes()
    assert request.inputs[1].data == [5, 6]
    assert request.parameters.model_extra == {"priority": 2}


@pytest.mark.parametrize("buffers", [0, 1, 3])
def test_a_raw_buffer_count_that_does_not_match_is_a_400(buffers: int) -> None:
    message = pb.ModelInferRequest(
        model_name="m",
        inputs=[
            InputTensor(name="a", datatype="FP32", shape=[1]),
            InputTensor(name="b", datatype="FP32", shape=[1]),
        ],
        raw_input_contents=[b"\0" * 4] * buffers,
    )
    with pytest.raises(InvalidInput, match=f"{buffers} raw_input_contents for 2 inputs") as err:
        read_request(message)
    assert err.value.status_code == 400
