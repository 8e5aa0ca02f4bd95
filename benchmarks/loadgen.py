"""The load generator: a closed loop of N concurrent workers, run in its own process(es), off the server's core.

Why asyncio (the default) rather than threads with the sync clients: one event loop (uvloop) in one thread
serves every worker, so no reply waits in the client for a thread to win the GIL back (with 8–64 threads
and a 5 ms switch interval that wait shows up as server latency, mostly in p99), and 64 workers need no 64
OS threads. In client CPU per reply the two measured on a par here (see README.md); `--client-mode threads`
is kept so that this can be checked on any machine.

Each worker owns one client (tritonclient.http.aio / tritonclient.grpc.aio: one connection / channel per
worker) and a small pool of distinct inputs whose expected outputs were computed in-process beforehand, so
every reply is checked (shape, and values within the tolerance) without slowing the loop; and a mixed-up
reply (another worker's rows) is caught, which matters once requests are batched together.

Timing uses time.perf_counter (CLOCK_MONOTONIC on Linux, the same clock in every process). A request is
counted when it *completes* inside [t_start, t_end); workers start at t_start - warmup.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REQUEST_TIMEOUT_S = 30.0
# tritonclient.http.aio posts its JSON body without a Content-Type, so aiohttp labels it
# application/octet-stream and MLServer answers 422; and aiohttp asks for gzip by default, which MLServer's
# GZip middleware then spends server CPU on for replies over 500 bytes (8-row replies). Both are set here,
# the same for every server: plain JSON both ways.
REST_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
# "rest-binary": tritonclient's own request builder (Triton's binary tensor data extension, binary in and,
# through its `binary_data_output`, binary out); aiohttp labels the body application/octet-stream.
BINARY_HEADERS = {"Accept-Encoding": "identity"}


def request_headers(protocol: str) -> dict[str, str] | None:
    """The headers every request of `protocol` ("rest", "rest-binary" or "grpc") carries."""
    if protocol == "grpc":
        return None
    return dict(REST_HEADERS if protocol == "rest" else BINARY_HEADERS)


def plain_v2_body(inputs: Any, request_id: Any = "", outputs: Any = None, **_: Any) -> tuple[bytes, None]:
    """Replaces tritonclient.http's request builder: the plain V2 JSON body, serialized once per input.

    tritonclient adds `parameters: {binary_data_output: true}` to every request that names no outputs.
    MLServer hands request parameters to the runtime; mlserver-mlflow passes them to MLflow's predict as
    `params`, and MLflow then logs a WARNING on *every* request (the model has no params schema), which
    would charge the peer for a client quirk. The inputs of a pool never change, so each body is built
    once (keyed by the InferInput objects) and reused: the client does not re-encode thousands of floats
    per request (a conv request of 8 rows is 24,576 numbers).
    """
    key = (tuple(id(i) for i in inputs), request_id)
    cached = _BODIES.get(key)
    if cached is not None:
        return cached[1], None
    doc: dict[str, Any] = {"inputs": [i._get_tensor() for i in inputs]}
    if request_id:
        doc["id"] = request_id
    if outputs:
        doc["outputs"] = [o._get_tensor() for o in outputs]
    body = json.dumps(doc).encode()
    # The entry keeps its InferInputs alive: a freed one's id() could be reused by a new input (the
    # benchmark's probe builds throwaway inputs), which would then be sent the old input's body.
    _BODIES[key] = (tuple(inputs), body)
    return body, None


_BODIES: dict[Any, tuple[tuple[Any, ...], bytes]] = {}


def patch_tritonclient_http() -> None:
    import tritonclient.http._client as sync_client
    import tritonclient.http.aio as aio_client

    aio_client._get_inference_request = plain_v2_body  # type: ignore[attr-defined]
    sync_client._get_inference_request = plain_v2_body  # type: ignore[attr-defined]


@dataclass
class Job:
    """One client process's share of one measurement point."""

    protocol: str  # "rest" | "rest-binary" | "grpc"
    url: str  # host:port
    model: str
    input_name: str
    output_name: str  # the name the server *answers* with (the peer answers output-1)
    workers: int
    inputs: list[list[np.ndarray]]  # per worker, a pool of inputs
    expected: list[list[np.ndarray]] | None  # per worker, the reference outputs (None: check shape only)
    out_shape: list[tuple[int, ...]]  # per pool item (same for every worker)
    t_start: float = 0.0  # filled in from the parent's common window
    t_end: float = 0.0
    tolerance: float = 1e-4
    cpus: list[int] | None = None  # pin this process to these cores
    mode: str = "asyncio"  # "asyncio" | "threads"


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, successful replies in the window
    ok: int = 0
    errors: int = 0  # transport / HTTP / gRPC errors and timeouts, in the window
    wrong: int = 0  # replies whose values or shape do not match the reference, in the window
    samples: list[str] = field(default_factory=list)  # a few error messages

    def add(
        self, t0: float, t1: float, outcome: str | None, message: str = "", job: Job | None = None
    ) -> None:
        if job is not None and not (job.t_start <= t1 < job.t_end):
            return
        if outcome is None:
            self.ok += 1
            self.latencies.append(t1 - t0)
            return
        if outcome == "wrong":
            self.wrong += 1
        else:
            self.errors += 1
        if len(self.samples) < 5 and message not in self.samples:
            self.samples.append(message)


def check(
    out: np.ndarray | None, shape: tuple[int, ...], expected: np.ndarray | None, tol: float
) -> str | None:
    if out is None:
        return "the reply has no such output"
    if tuple(out.shape) != shape:
        return f"shape {list(out.shape)} != {list(shape)}"
    if expected is not None and not np.allclose(out, expected, rtol=tol, atol=tol):
        worst = float(np.max(np.abs(out.astype(np.float64) - expected)))
        return f"values differ from the in-process forward (max abs diff {worst:.3g})"
    return None


# ---------------------------------------------------------------------------------------------- asyncio


def triton_dtype(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (FP32, INT64, FP16, ...)."""
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


def _make_inputs(job: Job, module: Any, w: int) -> list[Any]:
    pool = []
    for array in job.inputs[w]:
        inp = module.InferInput(job.input_name, list(array.shape), triton_dtype(array))
        if job.protocol == "rest":
            inp.set_data_from_numpy(array, binary_data=False)  # MLServer has no binary extension
        else:
            inp.set_data_from_numpy(array)  # raw_input_contents (gRPC), binary tensor data (rest-binary)
        pool.append(inp)
    return pool


async def _async_worker(job: Job, client: Any, pool: list[Any], w: int, tally: Tally) -> None:
    expected = job.expected[w] if job.expected is not None else None
    headers = request_headers(job.protocol)
    n = len(pool)
    i = w  # workers start at different pool items
    while True:
        t0 = time.perf_counter()
        if t0 >= job.t_end:
            break
        k = i % n
        i += 1
        try:
            result = await asyncio.wait_for(
                client.infer(job.model, [pool[k]], headers=headers), REQUEST_TIMEOUT_S
            )
            out = result.as_numpy(job.output_name)
        except TimeoutError:
            tally.add(t0, time.perf_counter(), "error", f"no reply within {REQUEST_TIMEOUT_S:.0f}s", job)
            continue
        except Exception as err:
            tally.add(t0, time.perf_counter(), "error", f"{type(err).__name__}: {str(err)[:300]}", job)
            await asyncio.sleep(
                0.001
            )  # a server that fails at once must not turn the client into a busy loop
            continue
        t1 = time.perf_counter()
        problem = check(out, job.out_shape[k], expected[k] if expected is not None else None, job.tolerance)
        tally.add(t0, t1, None if problem is None else "wrong", problem or "", job)


async def _cpu_probe(job: Job, into: list[float]) -> None:
    """This process's CPU time over [t_start, t_end): how busy the client's core was while measured."""
    await asyncio.sleep(max(job.t_start - time.perf_counter(), 0))
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(max(job.t_end - time.perf_counter(), 0))
    into.append((time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9))


async def _async_main(job: Job, go: Any) -> tuple[Tally, float]:
    if job.protocol != "grpc":
        import tritonclient.http.aio as tc

        clients = [tc.InferenceServerClient(job.url, conn_limit=1) for _ in range(job.workers)]
    else:
        import tritonclient.grpc.aio as tc  # type: ignore[no-redef]

        clients = [tc.InferenceServerClient(job.url) for _ in range(job.workers)]
    pools = [_make_inputs(job, tc, w) for w in range(job.workers)]
    tally, busy = Tally(), []  # type: ignore[var-annotated]
    try:
        await asyncio.get_running_loop().run_in_executor(None, go)  # ready; wait for the common window
        await asyncio.gather(
            _cpu_probe(job, busy),
            *(_async_worker(job, clients[w], pools[w], w, tally) for w in range(job.workers)),
        )
    finally:
        for client in clients:
            await client.close()
    return tally, busy[0] if busy else float("nan")


# ---------------------------------------------------------------------------------------------- threads


def _thread_worker(
    job: Job, client: Any, pool: list[Any], w: int, tally: Tally, lock: threading.Lock
) -> None:
    expected = job.expected[w] if job.expected is not None else None
    n, i = len(pool), w
    local = Tally()
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= job.t_end:
                break
            k = i % n
            i += 1
            try:
                kwargs: dict[str, Any] = (
                    {"client_timeout": REQUEST_TIMEOUT_S}
                    if job.protocol == "grpc"
                    else {"headers": request_headers(job.protocol)}
                )
                out = client.infer(job.model, [pool[k]], **kwargs).as_numpy(job.output_name)
            except Exception as err:
                local.add(t0, time.perf_counter(), "error", f"{type(err).__name__}: {str(err)[:300]}", job)
                continue
            t1 = time.perf_counter()
            problem = check(
                out, job.out_shape[k], expected[k] if expected is not None else None, job.tolerance
            )
            local.add(t0, t1, None if problem is None else "wrong", problem or "", job)
    finally:
        with lock:
            tally.latencies += local.latencies
            tally.ok += local.ok
            tally.errors += local.errors
            tally.wrong += local.wrong
            tally.samples += [s for s in local.samples if s not in tally.samples][:5]


def _threads_main(job: Job, go: Any) -> tuple[Tally, float]:
    if job.protocol != "grpc":
        import tritonclient.http as tc

        clients = [
            tc.InferenceServerClient(job.url, concurrency=1, network_timeout=REQUEST_TIMEOUT_S)
            for _ in range(job.workers)
        ]
    else:
        import tritonclient.grpc as tc  # type: ignore[no-redef]

        clients = [tc.InferenceServerClient(job.url) for _ in range(job.workers)]
    pools = [_make_inputs(job, tc, w) for w in range(job.workers)]
    tally, lock = Tally(), threading.Lock()
    go()
    threads = [
        threading.Thread(target=_thread_worker, args=(job, clients[w], pools[w], w, tally, lock))
        for w in range(job.workers)
    ]
    for t in threads:
        t.start()
    time.sleep(max(job.t_start - time.perf_counter(), 0))
    c0, w0 = time.process_time(), time.perf_counter()
    time.sleep(max(job.t_end - time.perf_counter(), 0))
    busy = (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9)
    for t in threads:
        t.join()
    return tally, busy


# ---------------------------------------------------------------------------------------------- entry


def run_job(job: Job, queue: Any, ready: Any, go: Any, window: Any) -> None:
    """The target of each client process. Builds its clients, says `ready`, waits for `go` (the parent
    then has written the common measurement window into `window`), runs, and puts a result dict on `queue`."""
    try:
        if job.cpus:
            os.sched_setaffinity(0, job.cpus)
        if job.protocol == "rest":
            patch_tritonclient_http()

        def wait_for_window() -> None:
            ready.release()
            go.wait()
            job.t_start, job.t_end = window[0], window[1]

        if job.mode == "asyncio":
            try:
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            except ImportError:
                pass
            tally, busy = asyncio.run(_async_main(job, wait_for_window))
        else:
            tally, busy = _threads_main(job, wait_for_window)
        queue.put(
            {
                "latencies": np.asarray(tally.latencies, dtype=np.float64),
                "ok": tally.ok,
                "errors": tally.errors,
                "wrong": tally.wrong,
                "samples": tally.samples,
                "client_cpu": busy,
            }
        )
    except BaseException as err:
        ready.release()
        queue.put({"crash": f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"})
