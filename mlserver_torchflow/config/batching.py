"""The per-model settings of batching and the queue (Triton's priority levels and queue policies)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .views import BatchConfig, LevelPolicy


class QueuePolicy(BaseModel):
    """One priority level's queue policy, as Triton's `ModelQueuePolicy`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_queue_size: int = Field(default=0, ge=0)
    """Requests that may wait at this level; more get a 503. 0 = no limit (`max_queue_rows` still holds)."""

    default_timeout_microseconds: int = Field(default=0, ge=0)
    """How long a request may wait at this level before `timeout_action`; 0 = `queue_timeout`."""

    allow_timeout_override: bool = True
    """Whether a request's own `timeout` parameter (microseconds) replaces the default."""

    timeout_action: Literal["reject", "delay"] = "reject"
    """`reject`: a 503, unrun. `delay`: it waits on, behind the requests of its level and above still in time."""

    def view(self) -> LevelPolicy:
        return LevelPolicy(
            max_queue_size=self.max_queue_size,
            default_timeout=self.default_timeout_microseconds / 1e6,
            allow_timeout_override=self.allow_timeout_override,
            delay=self.timeout_action == "delay",
        )


class BatchSettings(BaseModel):
    """Fields of `TorchFlowSettings` (model.py): batching, the queue, where passes compute."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_batch_size: int = 0
    """Rows per forward pass; above 1 turns on the runtime's own batcher (also read from
    model-settings.json's top level). A request with more rows runs alone, never dropped."""

    max_batch_time: float = 0.0
    """The longest (seconds) a request waits for company once the device could run it (time behind a
    running pass, or behind the writing of its answers, does not count). The dispatcher holds a batch only while more rows are due soon
    enough to pay for the wait: a lone client never waits (docs/batching.md)."""

    preferred_batch_sizes: tuple[int, ...] = ()
    """Pad each batch up to the nearest of these row counts (stable shapes for compile / CUDA graphs)."""

    max_queue_rows: int | None = None
    """Rows allowed to wait; beyond it a request gets a 503. Default: 32 x max_batch_size."""

    queue_timeout: float = 0.0
    """Seconds a request may wait in the queue before it fails with a 503 unrun; 0 = no limit. A
    priority level's `default_timeout_microseconds`, or a request's own `timeout`, takes its place."""

    priority_levels: int = Field(default=0, ge=0)
    """Triton's priority levels: 1 is the highest, served first; 0 = one level (requests' `priority`
    ignored). A request's `priority` parameter picks its level; 0 or one above the levels means
    `default_priority_level`."""

    default_priority_level: int = Field(default=0, ge=0)
    """The level of a request without a (valid) `priority`; 0 = the lowest level (`priority_levels`)."""

    default_queue_policy: QueuePolicy = Field(default_factory=lambda: QueuePolicy())
    """Every level's queue policy (`max_queue_size`, `default_timeout_microseconds`,
    `allow_timeout_override`, `timeout_action`; see docs/batching.md), unless `priority_queue_policy`
    names the level."""

    priority_queue_policy: dict[int, QueuePolicy] = Field(default_factory=dict)
    """Queue policies of single levels, e.g. `{"1": {"max_queue_size": 8}}`."""

    compute_on: Literal["auto", "host", "device"] = "auto"
    """Where the forward pass computes, which sets how many batches may be in flight: `host` (the
    server's own cores: one batch at a time, the next one grows meanwhile), `device` (off them, as a
    GPU: the next batch is handed over just before the running one ends). `auto`: `device` on CUDA;
    elsewhere measured from the pass thread's CPU time (docs/batching.md)."""

    inline_pass_seconds: float = Field(default=0.002, ge=0)
    """A pass the cost fit expects to take at most this long, on a model computing on the server's own
    cores (`compute_on`), runs on the event loop itself rather than on the model's thread, whose hand-off
    and wake-ups cost more than a small CPU model's whole pass (docs/batching.md). 0 = always the
    model's thread. Never with `execution_timeout`."""

    execution_timeout: float = Field(default=0.0, ge=0)
    """Seconds one forward pass may run before its requests get a retryable 503 and this copy is marked
    unhealthy (readiness false) until the pass returns; 0 = no limit. A hung device cannot be interrupted:
    this stops requests from queueing behind it, and tells the orchestrator."""

    @model_validator(mode="after")
    def _check_levels(self) -> Self:
        levels = max(self.priority_levels, 1)
        if self.default_priority_level > levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is above priority_levels ({levels})"
            )
        unknown = [k for k in self.priority_queue_policy if not 1 <= k <= levels]
        if unknown:
            raise ValueError(f"priority_queue_policy names levels {unknown}; the levels are 1 to {levels}")
        return self

    def queue_levels(self) -> tuple[LevelPolicy, ...]:
        count = max(self.priority_levels, 1)
        policies = [self.priority_queue_policy.get(k, self.default_queue_policy) for k in range(1, count + 1)]
        return tuple(p.view() for p in policies)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _check_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in value):
            raise ValueError("sizes must be positive row counts")
        return tuple(sorted(set(value)))

    def batch_config(self) -> BatchConfig:
        return BatchConfig(
            max_batch_size=self.max_batch_size,
            max_batch_time=max(self.max_batch_time, 0.0),
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_queue_rows=self.max_queue_rows
            if self.max_queue_rows is not None
            else 32 * max(self.max_batch_size, 1),
            queue_timeout=self.queue_timeout,
            execution_timeout=self.execution_timeout,
            levels=self.queue_levels(),
            default_level=self.default_priority_level or max(self.priority_levels, 1),
            compute_on=self.compute_on,
            inline_pass_seconds=self.inline_pass_seconds,
        )
