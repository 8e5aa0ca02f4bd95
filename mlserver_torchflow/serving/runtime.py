"""TorchFlowRuntime: a thin MLServer runtime; the work lives in the layers below it.

MLServer calls each hook with a contract of its own:
- `__init__(settings)`: once per model, in every process that serves it. Installs the patches (once
  per process), reads the server settings (once per process) and registers the REST extras.
- `load()`: find, load, place and warm up the model (`loading.load_model`). Returns True or raises:
  with parallel workers a False would still report ready. A failure at startup makes the process exit
  3 (patches.startup).
- `predict(request)`: decode and check, batch, run, encode. Every client error is a `TorchFlowError`
  with its status; anything the model raises becomes a 500 with one line, the traceback in the log.
  Its work is `answer(request, encode, headers)`, which the gRPC lane (`grpc_lane`) calls with its own
  request and an `encode` that writes the protobuf response.
- `metadata()`: the V2 interface from the signature, plus `torchflow.*` facts about the load.
- `unload()`: also after a failed load, so every attribute may be missing. Frees each device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from mlserver import MLModel
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse

from .. import patches
from ..common import Named, first_line, logger, rows_of
from ..config import load_settings, server_settings
from ..engine.phases import Phases
from ..engine.replica import Replica
from ..errors import ModelExecutionError, ModelLoadError, TorchFlowError, Unloading
from ..patches import frontends, grpc_raw, shutdown, startup
from ..protocol.codec import decode_request
from ..protocol.metadata import build_metadata, triton_config, triton_queue_policy
from ..protocol.outputs import check_requested, response_outputs, select_outputs
from ..protocol.scheduling import scheduling
from . import heap, lifecycle, logs, threads, triton
from .loading import extra_of, load_model, signature_on_disk
from .metrics import BatchMetrics
from .stats import ModelStats

T = TypeVar("T")


class TorchFlowRuntime(MLModel):
    """Serves one MLflow PyTorch model over V2 REST and gRPC."""

    _active = 0  # predict() calls in progress

    def __init__(self, settings: ModelSettings):
        lifecycle.take_over_batching(settings)
        super().__init__(settings)
        patches.install()
        frontends.attach(triton.mount)
        try:
            logs.configure(server_settings().log_format)
            threads.configure(server_settings().torch_threads, server_settings().torch_interop_threads)
        except ModelLoadError as err:  # raised before load(): say why here, as load() would
            logger.error("model %s failed to load: %s", settings.name, err)
            raise
        # Registered in every process that builds the model: the main one converts gRPC requests.
        grpc_raw.register(settings.name)
        self.stats = ModelStats()
        self.triton_config = triton.custom_handler(self.name, "triton_config", "config", self.model_config)
        self.triton_stats = triton.custom_handler(self.name, "triton_stats", "stats", self.model_stats)

    @property
    def healthy(self) -> bool:
        """False while every copy is stuck in a pass past execution_timeout: readiness says so
        (patches/frontends.py), while requests still reach the runtime and get a retryable 503."""
        copies = self.copies
        return not copies or any(r.batcher.healthy for r in copies)

    @property
    def copies(self) -> tuple[Replica, ...]:
        """The loaded copies of the model (one per device entry); empty before load and after unload."""
        batcher = self.__dict__.get("_batcher")
        return tuple(batcher.replicas) if batcher is not None else ()

    async def load(self) -> bool:
        """Raises on failure (never returns False: with parallel workers False still reports ready)."""
        at_startup = startup.during_startup()
        try:
            return await self._load()
        except Exception as err:
            if at_startup:
                # Readiness goes false before MLServer unregisters the model (patches/startup.py).
                startup.mark_failed()
            when = " at startup" if at_startup else ""
            if isinstance(err, TorchFlowError):
                logger.error("model %s failed to load%s: %s", self.name, when, err)
            else:
                logger.exception(
                    "model %s failed to load%s: %s: %s", self.name, when, type(err).__name__, err
                )
            raise

    async def _load(self) -> bool:
        loaded = await load_model(
            self.settings, lambda label: BatchMetrics(self.name, label, self.stats.executed)
        )
        self.torchflow, self._limits = loaded.torchflow, loaded.torchflow.request_limits()
        self._interface, self._batcher, self._facts = loaded.interface, loaded.batcher, loaded.facts
        shutdown.register(self)  # a SIGTERM answers what it queued (patches/shutdown.py)
        heap.settle(server_settings().gc_freeze)
        return True

    async def model_config(self) -> dict[str, Any]:
        """Triton's model config. With parallel workers it may run in the main process, where load()
        never ran: the signature is read from disk then (no torch needed)."""
        settings = getattr(self, "torchflow", None) or load_settings(extra_of(self.settings))
        interface = getattr(self, "_interface", None)
        if interface is None:
            interface = await signature_on_disk(self.settings, settings)
        batch = settings.batch_config()
        return triton_config(
            self.name,
            interface.inputs,
            interface.outputs,
            batch.max_batch_size,
            batch.preferred_batch_sizes,
            batch.max_batch_time,
            triton_queue_policy(batch, settings.priority_levels),
        )

    async def model_stats(self) -> dict[str, Any]:
        return self.stats.triton(self.name, self.version)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        def respond(outputs: Named) -> InferenceResponse:
            # Built from checked parts: skip pydantic's second validation on the hot path.
            return InferenceResponse.model_construct(
                model_name=self.name,
                model_version=self.version,
                id=payload.id,
                parameters=None,
                outputs=response_outputs(outputs),
            )

        parameters = payload.parameters
        return await self.answer(payload, respond, lambda: parameters.headers if parameters else None)

    async def answer(
        self, request: Any, encode: Callable[[Named], T], headers: Callable[[], Mapping[str, str] | None]
    ) -> T:
        """Decode and check `request` (an `InferenceRequest`, or the gRPC lane's `grpc_codec.Request`),
        batch, run, and `encode` the outputs the client asked for. `headers` are read only for the log
        line of a failure."""
        started = time.monotonic()
        self._active += 1
        try:
            return await self._answer(request, encode, started)
        except TorchFlowError as err:
            self.stats.failed(time.monotonic() - started)
            logs.request_failed(self.name, request.id, headers(), err)
            logs.tag_with_request_id(err, request.id)
            raise
        finally:
            self._active -= 1

    async def _answer(self, request: Any, encode: Callable[[Named], T], started: float) -> T:
        interface = self._interface
        known = [s.name for s in interface.outputs] if interface.outputs else None
        requested = check_requested(request, known)
        arrays = decode_request(request, interface, self._limits)
        priority, timeout_us = scheduling(request.parameters)
        decoded = time.monotonic()
        phases = Phases()
        batcher = self.__dict__.get("_batcher")
        if batcher is None:  # it resolved this copy just before an unload finished
            raise Unloading("the model was unloaded (or replaced) as this request arrived; retry it.")
        try:
            named = await batcher.submit(arrays, phases, priority, timeout_us)
        except TorchFlowError:
            raise
        except Exception as err:
            # Logged with its traceback by answer(), as one failed request.
            line = first_line(str(err))
            raise ModelExecutionError(
                f"model {self.name!r} failed on this request: {type(err).__name__}: {line}"
            ) from err
        answered = time.monotonic()
        encoded = encode(select_outputs(named, interface, requested))
        finished = time.monotonic()
        phases.compute_input += decoded - started
        phases.compute_output += finished - answered
        self.stats.succeeded(rows_of(arrays), finished - started, phases)
        return encoded

    async def metadata(self) -> MetadataModelResponse:
        interface = self._interface
        dispatch = "; ".join(r.batcher.describe() for r in self.copies)
        facts = {**self._facts, "dispatch": dispatch} if dispatch else self._facts
        return build_metadata(self.name, self.version, interface.inputs, interface.outputs, facts)

    def expire_queued(self, err: Exception) -> None:
        batcher = self.__dict__.get("_batcher")
        if batcher is not None:
            batcher.expire_queued(err)

    def drained(self) -> None:
        stats = self.stats
        logger.info(
            "model %s drained: %d requests answered since load (%d succeeded, %d failed)",
            self.name,
            stats.success.count + stats.fail.count,
            stats.success.count,
            stats.fail.count,
        )

    async def unload(self) -> bool:
        """Also called after a failed load, so every attribute may be missing.

        MLServer calls it after it stopped routing requests here (on a reload, once the new copy is
        registered): the requests already on their way in are answered first (`lifecycle.settle`), then the
        copies go."""
        started = time.monotonic()
        if "_batcher" in self.__dict__:  # a copy that never loaded has nothing to answer: no wait
            await lifecycle.settle(lambda: self._active, server_settings().drain_timeout)
        grpc_raw.unregister(self.name)
        # Every copy's batcher, thread and module go, then each device's memory is released, even
        # while MLServer still holds this object.
        replicas = self.__dict__.pop("_batcher", None)
        if replicas is not None:
            await replicas.close()
        heap.release(server_settings().gc_freeze)
        logger.info("unloaded model %s in %.2fs", self.name, time.monotonic() - started)
        return True
