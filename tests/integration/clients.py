"""Shared by the integration tests that hammer one server: many real tritonclient clients on threads,
alternating REST (JSON tensors) and gRPC, each checking its own answers; and reading one metric."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.server import Server

# (worker, input, answer) -> what is wrong with the answer, or None
Check = Callable[[int, np.ndarray, np.ndarray], str | None]


def run_clients(
    server: Server, model: str, workers: int, requests: int, max_rows: int, check: Check
) -> tuple[list[str], list[int]]:
    """Odd workers use gRPC, even ones REST; each sends `requests` inputs of 1 to `max_rows - 1` rows.

    Returns the problems found (wrong answers, and threads that died: a thread's death must fail the
    test, not vanish) and one entry per answered request (the worker's number).
    """
    errors: list[str] = []
    done: list[int] = []

    def client(worker: int) -> None:
        try:
            grpc_side = worker % 2 == 1
            module = grpcclient if grpc_side else httpclient
            conn = module.InferenceServerClient(server.grpc if grpc_side else server.http)
            rng = np.random.default_rng(worker)
            for _ in range(requests):
                x = rng.random((int(rng.integers(1, max_rows)), 4), dtype=np.float32)
                tensor = module.InferInput("input-0", list(x.shape), "FP32")
                if grpc_side:
                    tensor.set_data_from_numpy(x)
                else:  # JSON tensors here; binary ones are tested in test_clients.py and test_binary_rest.py
                    tensor.set_data_from_numpy(x, binary_data=False)
                got = conn.infer(model, [tensor]).as_numpy("output-0")
                done.append(worker)
                problem = check(worker, x, got)
                if problem:
                    errors.append(f"worker {worker}: {problem}")
        except BaseException as err:
            errors.append(f"worker {worker} died: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors, done


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{(.*)\}})? ([0-9.e+-]+|NaN)$", line)
        if match and all(f'{k}="{v}"' in (match.group(2) or "") for k, v in labels.items()):
            total += float(match.group(3))
            found = True
    assert found, f"{name} {labels} not exported"
    return total
