"""The plain views of the settings that the engine and the protocol take, so that neither imports pydantic:
`TorchFlowSettings.batch_config()` and `.request_limits()` build them once per load."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_ROWS = 65_536
DEFAULT_MAX_ELEMENTS = 16 * 1024 * 1024  # 64 MiB of FP32: matches the 64 MiB body / message caps


@dataclass(frozen=True)
class LevelPolicy:
    """What the queue needs of one level's policy (seconds; 0 = none)."""

    max_queue_size: int = 0
    default_timeout: float = 0.0
    allow_timeout_override: bool = True
    delay: bool = False


@dataclass(frozen=True)
class BatchConfig:
    """What the batcher needs of the settings."""

    max_batch_size: int
    max_batch_time: float
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_rows: int = 0
    queue_timeout: float = 0.0
    execution_timeout: float = 0.0
    levels: tuple[LevelPolicy, ...] = (LevelPolicy(),)
    default_level: int = 1
    compute_on: str = "auto"
    inline_pass_seconds: float = 0.0


@dataclass(frozen=True)
class RequestLimits:
    """What the codec needs of the settings: per-request bounds, 0 = off."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_elements: int = DEFAULT_MAX_ELEMENTS
