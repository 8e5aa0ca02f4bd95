"""The benchmark client's request-body cache: a body must never go to an input it was not built for.

It lives with the integration tests because it imports tritonclient (see scripts/test.sh on why the
tiers run as separate processes).
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from loadgen import plain_v2_body


def test_throwaway_inputs_never_get_a_freed_inputs_body() -> None:
    """The probe builds an InferInput per request and drops it; CPython then reuses its id() for the next
    one. Keyed by id() alone, the cache sent an 8-row request the 1-row body it had built before."""
    for turn in range(60):
        rows = (1, 8, 3)[turn % 3]
        array = np.full((rows, 4), turn, np.float32)
        inp = httpclient.InferInput("x", list(array.shape), "FP32")
        inp.set_data_from_numpy(array, binary_data=False)
        body, _ = plain_v2_body([inp])
        sent = json.loads(body)["inputs"][0]
        assert sent["shape"] == [rows, 4]
        assert sent["data"] == array.ravel().tolist()
        del inp
        gc.collect()
