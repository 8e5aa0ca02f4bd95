"""Host <-> device copies: zero-copy on CPU; on CUDA, reused pinned staging and copies the caller owns.

Pinned memory needs CUDA, so the staging buffers' reuse and growth run unpinned on CPU (the same code,
`pin=False`) and pinned on CUDA. The CUDA cases have not run on a GPU in this repository yet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlserver_torchflow.engine.inference import Predictor
from mlserver_torchflow.engine.transfers import StagingBuffers, Transfers
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
    x = torch.rand(4, 3)
    (moved,) = transfers.to_device([x], torch.float32)
    assert moved is x
    (back,) = transfers.to_host([x], [torch.float32])
    assert back is x
    (cast,) = transfers.to_device([x], torch.float16)
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


@pytest.mark.parametrize("device", DEVICES)
def test_staged_copies_come_back_owned(device: str) -> None:
    """The GPU path: on CUDA with pinned buffers; on CPU the same staging, unpinned (`stage=True`)."""
    transfers = Transfers(torch.device(device), pin=device == "cuda", stage=True)
    x, ids = torch.rand(5, 4), torch.arange(5)
    moved = transfers.to_device([x, ids], torch.float16)
    assert [t.device.type for t in moved] == [device, device]
    assert moved[0].dtype == torch.float16 and moved[1].dtype == torch.int64
    torch.testing.assert_close(moved[0].cpu(), x.half())
    first_back = transfers.to_host([moved[0] * 2, moved[1] + 1], [torch.float32, torch.int64])
    expected = (x.half() * 2).float()
    torch.testing.assert_close(first_back[0], expected)
    torch.testing.assert_close(first_back[1], ids + 1)
    # The next batch reuses the staging buffers: the first batch's results must not change.
    again = transfers.to_device([torch.zeros(5, 4), torch.zeros(5, dtype=torch.int64)], torch.float16)
    transfers.to_host([again[0] - 1, again[1] - 1], [torch.float32, torch.int64])
    torch.testing.assert_close(first_back[0], expected)
    torch.testing.assert_close(first_back[1], ids + 1)
    assert transfers.staged_bytes() >= 5 * 4 * 2 + 5 * 8


@ON_CUDA
def test_cuda_copies_go_through_pinned_staging_and_come_back_owned() -> None:
    transfers = Transfers(torch.device("cuda", 0))
    x, ids = torch.rand(5, 4), torch.arange(5)
    moved = transfers.to_device([x, ids], torch.float16)
    assert [t.device.type for t in moved] == ["cuda", "cuda"]
    assert moved[0].dtype == torch.float16 and moved[1].dtype == torch.int64
    first_back = transfers.to_host([moved[0] * 2, moved[1] + 1], [torch.float32, torch.int64])
    expected = (x.half() * 2).float()
    torch.testing.assert_close(first_back[0], expected)
    # The next batch reuses the staging buffers: the first batch's results must not change.
    transfers.to_host([torch.zeros(5, 4, device="cuda", dtype=torch.float16)], [torch.float32])
    torch.testing.assert_close(first_back[0], expected)
    assert transfers.staged_bytes() > 0


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
    predictor.transfers = Transfers(torch.device(device), pin=device != "cpu", stage=True)
    with pytest.raises(ValueError, match="own bug"):
        predictor.run([np.ones((2, 4), np.float32)])
    assert synced == [str(torch.device(device))]
