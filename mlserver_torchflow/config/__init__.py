"""The runtime's settings, built once and passed down: nothing else in the package reads `os.environ`.

Two objects, for two scopes:
- `TorchFlowSettings` (model.py), per model: `parameters.extra` in model-settings.json first, then
  `MLSERVER_MODEL_TORCHFLOW_<KEY>` environment variables. Built once per load by `load_settings`. Its
  fields of devices and precision (device.py) and of batching and the queue (batching.py) sit beside it.
- `ServerSettings` (server.py), per process (one REST app and one log stream serve every model):
  `MLSERVER_TORCHFLOW_<KEY>` environment variables. Built once by `server_settings`.

Each field's docstring is its documentation: `docs/settings.md` is generated from them
(`python scripts/settings_doc.py`), and a test checks that the page is current. `BatchConfig`,
`LevelPolicy` and `RequestLimits` (views.py) are the plain views the engine and the protocol take, so
neither imports pydantic.
"""

from .batching import QueuePolicy
from .model import ENV_PREFIX, TorchFlowSettings, load_settings
from .server import (
    API_GROUPS,
    DEFAULT_MAX_BODY_BYTES,
    SERVER_ENV_PREFIX,
    ServerSettings,
    child_environment,
    server_settings,
)
from .views import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_ROWS, BatchConfig, LevelPolicy, RequestLimits

__all__ = [
    "API_GROUPS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_ROWS",
    "ENV_PREFIX",
    "SERVER_ENV_PREFIX",
    "BatchConfig",
    "LevelPolicy",
    "QueuePolicy",
    "RequestLimits",
    "ServerSettings",
    "TorchFlowSettings",
    "child_environment",
    "load_settings",
    "server_settings",
]
