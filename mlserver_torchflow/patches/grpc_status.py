"""Give every REST status the runtime answers with its gRPC code.

MLServer 1.7.1 maps an `MLServerError`'s `status_code` to a gRPC code through a table that knows
only 400, 404, 422 and 500 (`mlserver.grpc.utils.STATUS_CODE_MAPPING`, read per error by
`_grpc_status_code`): our 413 and 503 would reach gRPC clients as `UNKNOWN`. This adds the codes
`errors.py` declares beside each kind, without changing the ones MLServer has.
"""

from __future__ import annotations

import grpc
from mlserver.grpc.utils import STATUS_CODE_MAPPING

from ..errors import grpc_codes
from .targets import Patch, Target


def install() -> None:
    for status, code in grpc_codes().items():
        STATUS_CODE_MAPPING.setdefault(status, getattr(grpc.StatusCode, code))


PATCH = Patch(
    name="grpc_status",
    why="413 and 503 become RESOURCE_EXHAUSTED and UNAVAILABLE over gRPC instead of UNKNOWN",
    targets=(
        Target("mlserver.grpc.utils:STATUS_CODE_MAPPING", "mlserver", ("1.7.1",), "9517475ddeb7"),
        Target("mlserver.grpc.utils:_grpc_status_code", "mlserver", ("1.7.1",), "369404d2d2f6"),
    ),
    install=install,
)
