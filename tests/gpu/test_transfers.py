"""Host <-> device copies: zero-copy on CPU; on CUDA, rows written once into reused pinned staging,
streams of each copy's own, and copies the caller owns.

Pinned memory needs CUDA, so the staging buffers' reuse and growth run unpinned on CPU (the same code,
`pin=False`) and pinned on CUDA. The CUDA cases have not run on a GPU in this repository yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mlserver_torchflow.engine.inference import Predictor
from mlserver_torchflow.engine.transfers import Slot, StagingBuffers, Transfers
from mlserver_torchflow.protocol.signature import Interface
from tests import builders as b

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]
PINS = [False, pytest.param(True, marks=ON_CUDA)]


@pytest.mark.parametrize("pin", PINS)
def test_staging_buffers_are_reused_and_grow(pin: bool) -> None:
    staging = StagingBuffers(pin)
    first = staging.view(0, torch.float32, torch.Size([8, 4]))
    assert first.shape == (8, 4) and first.dtype == torch.float32 and first.is_pinned() == pin
    smaller = staging.view(0, torch.float16, torch.Size([3, 4]))
    assert smaller.data_ptr() == first.data_ptr(), "a smaller batch allocated a new buffer"
    assert staging.nbytes() == 8 * 4 * 4
    other_slot = staging.view(1, torch.int64, torch.Size([2]))
    assert other_slot.data_ptr() != first.data_ptr()
    grown = staging.view(0, torch.float32, torch.Size([9, 4]))
    assert grown.shape == (9, 4)
    assert staging.nbytes() == 2 * 8 * 4 * 4 + 2 * 8  # doubled, not sized to the 9 rows exactly
    again = staging.view(0, torch.float32, torch.Size([16, 4]))
    assert again.data_ptr() == grown.data_ptr(), "growth by doubling should cover 16 rows"


def test_cpu_inputs_and_outputs_are_not_copied() -> None:
    transfers = Transfers(torch.device("cpu"))
    x = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    (moved,) = transfers.to_device(None, [[x]], None, torch.float32)
    assert moved.data_ptr() == x.ctypes.data
    (back,) = transfers.finish(None, transfers.start_out(None, [moved]), [torch.float32])
    assert back is moved
    (cast,) = transfers.to_device(None, [[x]], None, torch.float16)
    assert cast.dtype == torch.float16  # a cast is a copy, but only because the dtype changes
    assert transfers.staged_bytes() == 0


def test_cpu_forward_reads_the_request_arrays_in_place() -> None:
    """The module sees a tensor over the decoded numpy array itself: no copy before the forward."""
    seen: list[int] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.data_ptr())
            return x * 2

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    predictor = Predictor(Probe(), torch.device("cpu"), None, Interface(None, None))
    ((_, out),) = predictor.run([x])
    assert seen == [x.ctypes.data]
    np.testing.assert_array_equal(out, x * 2)


def staging(device: str) -> Transfers:
    """The GPU path: pinned with streams on CUDA; on CPU the same staging, unpinned (`stage=True`)."""
    return Transfers(torch.device(device), pin=device == "cuda", stage=True)


def one_pass(
    transfers: Transfers, parts: list[list[np.ndarray]], rows: int | None, fn: Any, dtype: torch.dtype
) -> tuple[Slot, list[torch.Tensor]]:
    """Stage `parts`, apply `fn` on the device and queue the copy out; the slot is not finished."""
    slot = transfers.acquire()
    with transfers.lanes.on("compute"):
        moved = transfers.to_device(slot, parts, rows, dtype)
        outs = transfers.start_out(slot, fn(moved))
    return slot, outs


@pytest.mark.parametrize("device", DEVICES)
def test_staged_copies_come_back_owned(device: str) -> None:
    transfers = staging(device)
    x, ids = np.random.default_rng(1).random((5, 4), dtype=np.float32), np.arange(5)
    slot, outs = one_pass(transfers, [[x, ids]], None, lambda t: [t[0] * 2, t[1] + 1], torch.float16)
    first_back = transfers.finish(slot, outs, [torch.float32, torch.int64])
    transfers.release(slot)
    expected = (torch.from_numpy(x).half() * 2).float()
    torch.testing.assert_close(first_back[0], expected)
    torch.testing.assert_close(first_back[1], torch.from_numpy(ids) + 1)
    # Later batches reuse both slots' buffers: the first batch's results must not change.
    for _ in range(2):
        zeros = [np.zeros((5, 4), np.float32), np.zeros(5, np.int64)]
        slot, outs = one_pass(transfers, [zeros], None, lambda t: [t[0] - 1, t[1] - 1], torch.float16)
        transfers.finish(slot, outs, [torch.float32, torch.int64])
        transfers.release(slot)
    torch.testing.assert_close(first_back[0], expected)
    torch.testing.assert_close(first_back[1], torch.from_numpy(ids) + 1)
    assert transfers.staged_bytes() >= 5 * 4 * 2 + 5 * 8


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_written_once_into_staging_and_padded_with_zeros(device: str) -> None:
    """Three requests' rows go straight into the slot's input buffer (no joined copy on the way),
    converted to fp16 there, and the padding rows are zeros even where an earlier batch left values."""
    transfers = staging(device)
    rng = np.random.default_rng(2)
    first = [[rng.random((6, 3), dtype=np.float32)]]
    for _ in range(2):  # each slot's buffer holds 6 rows of values
        slot, outs = one_pass(transfers, first, 8, lambda t: [t[0] + 0], torch.float16)
        transfers.finish(slot, outs, [torch.float16])
        transfers.release(slot)
    parts = [[rng.random((n, 3), dtype=np.float32)] for n in (2, 1, 2)]
    for _ in range(2):  # each slot in turn: 5 rows over its 6 old ones, padded to 8
        seen: list[torch.Tensor] = []
        slot, outs = one_pass(
            transfers, parts, 8, lambda t, seen=seen: seen.extend(t) or [t[0] * 1], torch.float16
        )
        (back,) = transfers.finish(slot, outs, [torch.float32])
        buffer = slot.inputs.view(0, torch.float16, (8, 3))
        transfers.release(slot)
        expected = np.concatenate([p[0] for p in parts] + [np.zeros((3, 3), np.float32)])
        np.testing.assert_array_equal(back.numpy(), expected.astype(np.float16).astype(np.float32))
        assert seen[0].dtype == torch.float16 and seen[0].shape == (8, 3)
        if device == "cpu":  # the forward read the staging buffer itself: the rows' only copy
            assert seen[0].data_ptr() == buffer.data_ptr()


@ON_CUDA
def test_cuda_copies_use_pinned_staging_streams_of_their_own_and_time_the_device() -> None:
    a, b2 = Transfers(torch.device("cuda", 0)), Transfers(torch.device("cuda", 0))
    assert a.lanes._streams["compute"] != b2.lanes._streams["compute"], "two copies share a stream"
    assert a.lanes._streams["compute"] != torch.cuda.default_stream(0)
    x = np.random.default_rng(3).random((64, 256), dtype=np.float32)
    slot, outs = one_pass(a, [[x]], None, lambda t: [t[0] @ t[0].T], torch.float32)
    assert slot.inputs.view(0, torch.float32, (64, 256)).is_pinned()
    (back,) = a.finish(slot, outs, [torch.float32])
    seconds = a.device_seconds(slot)
    a.release(slot)
    assert seconds is not None and 0 < seconds < 1
    torch.testing.assert_close(back, torch.from_numpy(x @ x.T), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_several_outputs_come_back_together(device: str) -> None:
    """Dict outputs of different dtypes, each right, in one pass (one sync on CUDA)."""
    model = b.build(b.DictOutputs).to(device)
    interface = Interface(None, None)
    predictor = Predictor(model, torch.device(device), None, interface)
    x = np.random.default_rng(2).random((6, 4), dtype=np.float32)
    got = dict(predictor.run([x]))
    expected = b.reference(b.build(b.DictOutputs), x)
    assert set(got) == {"logits", "probs", "label"}
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["label"], expected["label"])
    assert got["label"].dtype == np.int64


@pytest.mark.parametrize("device", DEVICES)
def test_a_failed_pass_waits_for_its_copies_before_the_next_one(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward that raises after its inputs were queued from the staging buffers: the device is synced
    before the error leaves, so a retry cannot overwrite a buffer a copy still reads. On CPU the sync is
    counted (there is nothing to wait for); on CUDA it also runs."""
    from mlserver_torchflow.engine import inference

    synced: list[str] = []
    real = inference.synchronize
    monkeypatch.setattr(inference, "synchronize", lambda d: synced.append(str(d)) or real(d))

    class Fails(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("the model's own bug")

    predictor = Predictor(Fails(), torch.device(device), None, Interface(None, None))
    predictor.transfers = staging(device)
    with pytest.raises(ValueError, match="own bug"):
        predictor.run([np.ones((2, 4), np.float32)])
    assert synced == [str(torch.device(device))]
    # The failed passes gave their staging slots back: more passes than slots still launch.
    for _ in range(3):
        with pytest.raises(ValueError, match="own bug"):
            predictor.launch([[np.ones((2, 4), np.float32)]], 2)
    assert len(predictor.transfers._free) == 2
