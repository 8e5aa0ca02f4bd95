"""`compile: true`: outputs equal the uncompiled model's, every warm-up size is compiled before
load() returns, and the recompile counter moves exactly when dynamo compiles a graph after ready.

Each test runs on CPU, and on CUDA when present (no GPU was lent while this was written, so the CUDA
cases have not run yet). One test uses inductor (about 20 s on a 2-core CPU); the others use the
`eager` backend, which runs the same dynamo capture, guards and recompiles without generating code.
The independent witness for "a graph was compiled" is dynamo's own process-wide
`counters["stats"]["unique_graphs"]`.
"""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from torch._dynamo.utils import counters

from mlserver_torchflow.engine import compiling
from mlserver_torchflow.engine import replica as replica_module
from mlserver_torchflow.engine.warmup import run_sizes
from mlserver_torchflow.errors import ModelLoadError
from tests.conftest import Saved
from tests.gpu.test_replicas import request
from tests.inprocess import first, load, predict, runtime

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
_names = itertools.count()


def name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"  # metric children are per model name: one per test


def recompiles(model: str, device: str) -> float | None:
    return REGISTRY.get_sample_value("torchflow_compile_recompiles_total", {"model": model, "device": device})


def graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def facts(model: object) -> dict[str, str]:
    params = asyncio.run(model.metadata()).parameters  # type: ignore[attr-defined]
    return params.model_dump() if params is not None else {}


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 4), dtype=np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_inductor_matches_eager_and_is_warmed_before_ready(
    mlp: dict[str, Saved], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reduce-overhead: CUDA graphs on a GPU; on CPU inductor skips them and runs its C++ kernels."""
    passes: list[int] = []
    real_run_sizes = replica_module.run_sizes

    async def counted(*args: Any) -> tuple[int, ...]:
        passes.append(args[6] if len(args) > 6 else 1)
        return await real_run_sizes(*args)

    monkeypatch.setattr(replica_module, "run_sizes", counted)
    model_name = name("inductor")
    before = graphs()
    model = load(
        mlp["pickle"].path,
        model_name,
        device=device,
        compile=True,
        compile_mode="reduce-overhead",
        max_batch_size=8,
        preferred_batch_sizes=[4, 8],
    )
    replica = first(model)
    assert replica.warmed_sizes == (4, 8)
    assert graphs() > before, "load() returned before anything was compiled"
    # The copy's own thread holds inductor's CUDA-graph state (torch 2.11 has it only on its import
    # thread); a thread of nobody's does not, so the check can fail.
    assert replica.executor.submit(torch._C._is_key_in_tls, "tree_manager_containers").result()
    with ThreadPoolExecutor(1) as plain:
        assert not plain.submit(torch._C._is_key_in_tls, "tree_manager_containers").result()
    assert passes == [3], "CUDA-graph modes warm each size three times (eager, record, replay)"
    assert "inductor mode=reduce-overhead" in facts(model)["torchflow.compile"]
    for n in (1, 3, 4, 6, 8):
        x = rows(n, n)
        np.testing.assert_allclose(predict(model, x), mlp["pickle"].expected(x), rtol=1e-4, atol=1e-5)
    assert recompiles(model_name, first(model).label) == 0
    asyncio.run(model.unload())


@pytest.mark.parametrize("device", DEVICES)
def test_requests_at_warmed_sizes_never_recompile(mlp: dict[str, Saved], device: str) -> None:
    model_name = name("warmed")
    model = load(
        mlp["pt2"].path,  # an ExportedProgram: its .module() is what gets compiled
        model_name,
        device=device,
        compile=True,
        compile_backend="eager",
        precision="autocast",
        dtype="bfloat16",
        max_batch_size=16,
        preferred_batch_sizes=[4, 8, 16],
    )
    assert first(model).warmed_sizes == (4, 8, 16)
    assert facts(model)["torchflow.compile"].endswith("warmed rows 4,8,16")
    assert recompiles(model_name, first(model).label) == 0
    after_load = graphs()
    for n in (1, 2, 4, 5, 8, 13, 16, 16, 3):
        x = rows(n, n)
        np.testing.assert_allclose(predict(model, x), mlp["pt2"].expected(x), rtol=0.05, atol=0.05)
    assert graphs() == after_load, "a request at a warmed (padded) size compiled a new graph"
    assert recompiles(model_name, first(model).label) == 0
    asyncio.run(model.unload())


@pytest.mark.parametrize("device", DEVICES)
def test_counter_moves_exactly_when_a_graph_is_compiled_after_ready(
    mlp: dict[str, Saved], device: str
) -> None:
    """warmup: false leaves every compilation to the requests: each one must be counted, and a
    request whose shape is already compiled must not be."""
    model_name = name("late")
    model = load(
        mlp["pickle"].path, model_name, device=device, compile=True, compile_backend="eager", warmup=False
    )
    assert first(model).warmed_sizes == ()
    assert recompiles(model_name, first(model).label) == 0
    for n, expect_new_graph in ((3, True), (3, False), (1, True), (1, False)):
        before, count = graphs(), recompiles(model_name, first(model).label) or 0
        x = rows(n, n)
        np.testing.assert_allclose(predict(model, x), mlp["pickle"].expected(x), rtol=1e-5, atol=1e-6)
        compiled = graphs() - before
        assert compiled == int(expect_new_graph), f"{n} rows: dynamo compiled {compiled} graph(s)"
        assert recompiles(model_name, first(model).label) == count + compiled
    asyncio.run(model.unload())


@pytest.mark.parametrize(
    "devices", [["cpu", "cpu"], pytest.param(["cuda:0", "cuda:0"], marks=DEVICES[1].marks)]
)
def test_two_compiled_copies_warm_up_and_serve_concurrently(
    mlp: dict[str, Saved], devices: list[str]
) -> None:
    """Both copies compile on their own threads at once, under autocast (which once deadlocked with
    dynamo tracing: see precision.py), then serve concurrent requests without recompiling."""
    model_name = name("copies")
    model = runtime(
        mlp["pt2"].path,
        model_name,
        devices=devices,
        compile=True,
        compile_backend="eager",
        precision="autocast",
        dtype="bfloat16",
        max_batch_size=8,
        max_batch_time=0.002,
        preferred_batch_sizes=[2, 4, 6, 8],
    )
    inputs = [rows(1 + i % 8, i) for i in range(64)]

    async def serve() -> list[np.ndarray]:
        assert await model.load() is True
        replies = await asyncio.gather(*(model.predict(request(x)) for x in inputs))
        for copy in model.copies:
            assert copy.warmed_sizes == (2, 4, 6, 8)
            assert recompiles(model_name, copy.label) == 0, f"{copy.label} recompiled"
        assert await model.unload() is True
        return [np.asarray(r.outputs[0].data.root, np.float32).reshape(r.outputs[0].shape) for r in replies]

    for x, got in zip(inputs, asyncio.run(serve()), strict=True):
        np.testing.assert_allclose(got, mlp["pt2"].expected(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("device", DEVICES)
def test_torchscript_cannot_be_compiled(mlp: dict[str, Saved], device: str) -> None:
    with pytest.raises(ModelLoadError, match="TorchScript model.*compile: false.*pt2"):
        load(mlp["torchscript"].path, name("ts"), device=device, compile=True, compile_backend="eager")


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_copy_is_freed_on_unload(mlp: dict[str, Saved], device: str, tmp_path: Path) -> None:
    import gc
    import weakref

    model = load(mlp["pt2"].path, name("free"), device=device, compile=True, compile_backend="eager")
    compiled = weakref.ref(first(model).predictor.module)
    assert asyncio.run(model.unload()) is True
    gc.collect()
    assert compiled() is None, "dynamo's caches keep the unloaded compiled module alive"


def test_warm_up_runs_each_size_the_passes_asked(mlp: dict[str, Saved]) -> None:
    calls: list[int] = []
    with ThreadPoolExecutor(1) as executor:
        done = asyncio.run(
            run_sizes(
                lambda arrays: calls.append(len(arrays[0])) or [],
                executor,
                (2, 4),
                None,
                first_interface(mlp),
                "here",
                3,
            )
        )
    assert done == (2, 4) and calls == [2, 2, 2, 4, 4, 4]


def first_interface(mlp: dict[str, Saved]) -> Any:
    from mlserver_torchflow.engine.layout import locate
    from mlserver_torchflow.protocol.signature import interface_from_mlmodel

    return interface_from_mlmodel(locate(str(mlp["pickle"].path)).mlmodel)


def test_older_torch_gets_the_recompile_limit_raised_process_wide(
    mlp: dict[str, Saved], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch 2.11's torch.compile has no recompile_limit argument (a shim of that signature stands in):
    five copies must still each compile their graphs instead of hitting the shared limit of 8."""
    real_compile = torch.compile

    def compile_211(model: Any, *, backend: Any = "inductor") -> Any:
        return real_compile(model, backend=backend)

    config = torch._dynamo.config
    torch._dynamo.reset()  # earlier tests' cache entries on the same forward would count toward the limit
    monkeypatch.setattr(torch, "compile", compile_211)
    monkeypatch.setattr(config, "recompile_limit", 8)
    model = load(
        mlp["pickle"].path,
        name("limit"),
        devices=["cpu"] * 5,
        compile=True,
        compile_backend="eager",
        max_batch_size=8,
        preferred_batch_sizes=[4, 8],
    )
    on_threads = [c.executor.submit(lambda: config.recompile_limit).result() for c in model.copies]
    assert on_threads == [8 * 5] * 5, "dynamo's config is per thread: each copy's own must be raised"
    # How many graphs each copy compiles depends on the copies' interleaving (dynamo's automatic dynamic
    # shapes are per code object); that every copy compiled is what the limit decides.
    assert all(c.backend.graphs > 0 for c in model.copies), [c.backend.graphs for c in model.copies]
    assert model.copies[0].executor.submit(compiling.raise_recompile_limit, 16).result() == 40, "lowered"
    asyncio.run(model.unload())


@pytest.mark.parametrize(
    ("options", "at_once"),
    [({"compile_mode": "reduce-overhead"}, 1), ({"compile_backend": "eager"}, 2)],
    ids=["cuda-graphs-in-turn", "plain-together"],
)
def test_copies_that_record_cuda_graphs_warm_up_one_at_a_time(
    mlp: dict[str, Saved], monkeypatch: pytest.MonkeyPatch, options: dict[str, str], at_once: int
) -> None:
    """Captures are process-wide CUDA state: in CUDA-graph modes the copies load and warm in turn (the
    CPU twin: inductor's reduce-overhead falls back to plain kernels, the order is the same); without
    CUDA graphs the copies load together."""
    active, most = 0, 0
    real_load = replica_module.load_replica

    async def tracked(*args: Any, **kwargs: Any) -> Any:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await asyncio.sleep(0.05)  # overlap, if the loads were gathered
            return await real_load(*args, **kwargs)
        finally:
            active -= 1

    from mlserver_torchflow.engine import replicas

    monkeypatch.setattr(replicas, "load_replica", tracked)
    model = load(
        mlp["pickle"].path, name("turns"), devices=["cpu", "cpu"], compile=True, warmup=False, **options
    )
    assert len(model.copies) == 2 and most == at_once
    asyncio.run(model.unload())
    asyncio.run(model.unload())
