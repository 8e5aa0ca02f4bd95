"""Request limits: a 413 from the declared shape, before any data is converted."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from mlserver.types import InferenceRequest, RequestInput, TensorData

from mlserver_torchflow import config
from mlserver_torchflow.config import RequestLimits, load_settings
from mlserver_torchflow.errors import InvalidInput, RequestTooLarge
from mlserver_torchflow.protocol.codec import decode_request
from mlserver_torchflow.protocol.signature import Interface, TensorSpec
from tests.conftest import Saved

SINGLE = Interface(inputs=(TensorSpec("input-0", "FP32", (-1, 4)),), outputs=None)
FREE = Interface(inputs=None, outputs=None)


def req(shape: list[int], data: Any, name: str = "input-0", datatype: str = "FP32") -> InferenceRequest:
    # model_construct: the codec must cope with what gRPC hands it, which pydantic never saw.
    inp = RequestInput.model_construct(
        name=name, datatype=datatype, shape=shape, data=TensorData.model_construct(root=data)
    )
    return InferenceRequest.model_construct(inputs=[inp])


def test_rows_over_the_limit_is_a_413_naming_input_limit_and_setting() -> None:
    small = RequestLimits(max_rows=8, max_elements=0)
    decode_request(req([8, 4], [0.0] * 32), SINGLE, small)
    with pytest.raises(RequestTooLarge) as err:
        decode_request(req([9, 4], [0.0] * 36), SINGLE, small)
    assert err.value.status_code == 413
    text = str(err.value)
    assert "'input-0'" in text and "9 rows" in text and "8 rows" in text and "max_request_rows" in text


def test_elements_over_the_limit_is_a_413() -> None:
    small = RequestLimits(max_rows=0, max_elements=40)
    with pytest.raises(RequestTooLarge, match=r"holds 44 values.*limit of 40.*max_request_elements"):
        decode_request(req([11, 4], [0.0] * 44), SINGLE, small)


def test_astronomical_shape_is_refused_before_anything_is_allocated() -> None:
    tracemalloc.start()
    try:
        for shape in ([2**40, 4], [2**62, 4], [1, 2**70]):
            with pytest.raises((RequestTooLarge, InvalidInput)):
                decode_request(req(shape, [0.0] * 4), FREE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"decoding refused shapes allocated {peak} bytes"


def test_limits_off_still_never_allocates_for_a_lying_shape() -> None:
    off = RequestLimits(max_rows=0, max_elements=0)
    with pytest.raises(InvalidInput, match="holds 4611686018427387904 values"):
        decode_request(req([2**60, 4], [0.0] * 4), SINGLE, off)
    with pytest.raises(RequestTooLarge, match="dimension above"):
        decode_request(req([0, 2**63], []), FREE, off)


def test_raw_bytes_are_checked_against_the_limit_before_their_size() -> None:
    small = RequestLimits(max_rows=2, max_elements=0)
    with pytest.raises(RequestTooLarge):
        decode_request(req([3, 4], b"\0" * 4), SINGLE, small)


@pytest.mark.parametrize(
    ("shape", "data", "match"),
    [
        ([0, 4], [], "holds no values"),
        ([1] * 40, [1.0], "40 dimensions"),
        ([1, 4], [[[1.0, 2.0, 3.0, 4.0]]], "nested data has shape"),
        ([2, 4], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], "nested data has shape"),
        ([1, 4], "1,2,3,4", "must be a list"),
        ([1, 4], {"a": 1}, "must be a list"),
        ([1, 4], None, "must be a list"),
        ([1, 4], [0.0] * 1000, "at least 1000"),
        ([1, 4], [1.0, None, 2.0, 3.0], "non-numbers"),
        ([1, 4], [2**100, 1, 1, 1], "non-numbers"),
    ],
)
def test_malformed_data_is_a_400(shape: list[int], data: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_request(req(shape, data), FREE if len(shape) != 2 else SINGLE)


def test_data_nested_past_numpys_rank_is_a_400() -> None:
    deep: Any = [1.0]
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidInput, match="not a rectangular list"):
        decode_request(req([1, 4], deep), SINGLE)


def test_a_huge_client_name_is_clipped_in_the_message() -> None:
    name = "x" * 1_000_000
    with pytest.raises(InvalidInput) as err:
        decode_request(req([1, 4], [0.0] * 4, name=name), SINGLE)
    assert len(str(err.value)) < 1000
    with pytest.raises(InvalidInput) as err:
        decode_request(req([1, 4], [0.0] * 4, name=name, datatype="X" * 100_000), FREE)
    assert len(str(err.value)) < 1000


def test_nan_and_inf_pass_for_floats() -> None:
    (array,) = decode_request(req([1, 4], [float("nan"), float("inf"), -float("inf"), 1e39]), SINGLE)
    assert np.isnan(array[0, 0]) and np.isinf(array[0, 1]) and np.isinf(array[0, 3])


def test_settings_defaults_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlserver_torchflow.errors import ModelLoadError

    defaults = load_settings(None).request_limits()
    assert defaults == RequestLimits(config.DEFAULT_MAX_ROWS, config.DEFAULT_MAX_ELEMENTS)
    monkeypatch.setenv("MLSERVER_MODEL_TORCHFLOW_MAX_REQUEST_ROWS", "7")
    assert load_settings({"max_request_elements": 0}).request_limits() == RequestLimits(7, 0)
    with pytest.raises(ModelLoadError, match="max_request_rows"):
        load_settings({"max_request_rows": -1})


def test_each_model_applies_its_own_limits(mlp: dict[str, Saved]) -> None:
    from tests.inprocess import load, predict

    tight = load(mlp["pt2"].path, max_request_rows=1)
    roomy = load(mlp["pt2"].path, max_request_rows=100)
    x = np.ones((2, 4), np.float32)
    with pytest.raises(RequestTooLarge, match="limit of 1 rows"):
        predict(tight, x)
    assert predict(roomy, x).shape == (2, 3)


def test_a_huge_request_id_is_a_400_not_a_huge_response_header() -> None:
    request = req([1, 4], [0.0] * 4)
    request.id = "i" * 1024
    decode_request(request, SINGLE)
    request.id = "i" * 1025
    with pytest.raises(InvalidInput, match="1025 characters"):
        decode_request(request, SINGLE)


@pytest.mark.parametrize("bad", ["\x1f", "id\n", "é", "日本"])
def test_a_request_id_that_cannot_be_a_header_is_a_400(bad: str) -> None:
    request = req([1, 4], [0.0] * 4)
    request.id = bad
    with pytest.raises(InvalidInput, match="printable ASCII"):
        decode_request(request, SINGLE)
    request.id = "0a908b7c-8ddd-4300-9c5c-bdd06b224242 ~!"
    decode_request(request, SINGLE)
