"""Shared fixtures: real MLflow models, saved once per session into a temporary folder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from torch import nn

from tests import builders as b
from tests.mlflow_server import MlflowServer
from tests.s3 import moto_server

# Support modules that assert: pytest shows their failures in detail, as it does for tests.
pytest.register_assert_rewrite("tests.kserve_crds")


@dataclass
class Saved:
    """A saved MLflow model and the module it came from (for expected outputs)."""

    path: Path
    model: nn.Module
    example: tuple[np.ndarray, ...]

    def expected(self, *arrays: np.ndarray) -> Any:
        return b.reference(self.model, *arrays)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("saved-models")


@pytest.fixture(scope="session")
def mlp(models_root: Path) -> dict[str, Saved]:
    """The MLP in every format, signature inferred from the example as users do."""
    model, example = b.build(b.MLP), b.example_for(b.MLP)
    return {
        fmt: Saved(b.save(model, models_root / f"mlp-{fmt}", fmt, example), model, example)
        for fmt in b.FORMATS
    }


@pytest.fixture(scope="session")
def two_inputs(models_root: Path) -> dict[str, Saved]:
    model, example = b.build(b.TwoInputs), b.example_for(b.TwoInputs)
    out = b.reference(model, *example)
    sig = b.tensor_signature({"features": example[0], "extra": example[1]}, {"score": out})
    return {
        fmt: Saved(b.save(model, models_root / f"two-{fmt}", fmt, example, sig), model, example)
        for fmt in ("pickle", "pt2")
    }


@pytest.fixture(scope="session")
def dict_outputs(models_root: Path) -> dict[str, Saved]:
    model, example = b.build(b.DictOutputs), b.example_for(b.DictOutputs)
    out = b.reference(model, *example)
    sig = b.tensor_signature({"x": example[0]}, out)
    return {
        fmt: Saved(b.save(model, models_root / f"dict-{fmt}", fmt, example, sig), model, example)
        for fmt in ("pickle", "pt2")
    }


@pytest.fixture(scope="session")
def embed(models_root: Path) -> Saved:
    model, example = b.build(b.Embed), b.example_for(b.Embed)
    return Saved(b.save(model, models_root / "embed-pt2", "pt2", example), model, example)


@pytest.fixture(scope="session")
def conv(models_root: Path) -> Saved:
    model, example = b.build(b.ConvNet), b.example_for(b.ConvNet)
    return Saved(b.save(model, models_root / "conv-pickle", "pickle", example), model, example)


@pytest.fixture(scope="session")
def columns(models_root: Path) -> Saved:
    """A DataFrame (column) signature: four double columns stacked into one [N, 4] tensor."""
    model, example = b.build(b.MLP), b.example_for(b.MLP)
    frame = pd.DataFrame(example[0].astype(np.float64), columns=["a", "b", "c", "d"])
    path = models_root / "columns-pickle"
    import mlflow.pytorch

    mlflow.pytorch.save_model(
        model,
        str(path),
        serialization_format="pickle",
        signature=b.column_signature(["a", "b", "c", "d"]),
        input_example=frame,
    )
    return Saved(path, model, example)


@pytest.fixture(scope="session")
def no_signature(models_root: Path) -> Saved:
    model, example = b.build(b.MLP), b.example_for(b.MLP)
    return Saved(b.save(model, models_root / "nosig-pickle", "pickle"), model, example)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MlflowServer]]:
    """Factory of real `mlflow server`s (tests/mlflow_server.py), each started, healthy, in its own folder.

    `mlflow_server()` proxies artifacts to local disk; `mlflow_server("s3")` stores them in a moto S3
    (started here unless `s3_endpoint=` names one); `basic_auth=True` adds MLflow's basic-auth app.
    Every server (and moto) started through it stops when the module's tests are done.
    """
    with contextlib.ExitStack() as stack:

        def start(
            artifacts: str = "proxied",
            *,
            basic_auth: bool = False,
            default_permission: str = "READ",
            s3_endpoint: str | None = None,
        ) -> MlflowServer:
            root = tmp_path_factory.mktemp("mlflow-server")
            if artifacts == "s3" and s3_endpoint is None:
                s3_endpoint = stack.enter_context(moto_server(root))
            server = MlflowServer(
                root,
                artifacts=artifacts,
                s3_endpoint=s3_endpoint,
                basic_auth=basic_auth,
                default_permission=default_permission,
            )
            return stack.enter_context(server.running())

        yield start
