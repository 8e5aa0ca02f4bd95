"""`TorchFlowRuntime.load()` in-process: formats, devices, precision, versions and the failure messages."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch

from mlserver_torchflow.engine.loading import Format, sniff_format
from mlserver_torchflow.errors import ModelLoadError
from tests import builders as b
from tests.conftest import Saved
from tests.inprocess import load, predict, runtime


@pytest.mark.parametrize("fmt", b.FORMATS)
def test_format_is_told_by_content_not_name(mlp: dict[str, Saved], fmt: str) -> None:
    weights = next((mlp[fmt].path / "data").glob("model.*"))
    expected = {"pickle": Format.PICKLE, "torchscript": Format.TORCHSCRIPT, "pt2": Format.PT2}[fmt]
    assert sniff_format(weights) is expected


def test_corrupt_weights_fail_with_the_file_named(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pickle"].path, tmp_path / "m")
    (tmp_path / "m" / "data" / "model.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelLoadError, match="model.pth.*(truncated|corrupt)"):
        load(tmp_path / "m")


def test_gpu_saved_pickle_loads_on_a_cpu_host(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    """No GPU here: the file's storages are tagged `cuda:0` by a serialization tagger, exactly as
    torch.save writes them from a GPU, so loading without map_location fails (checked first)."""
    registry = torch.serialization._package_registry
    before = list(registry)
    torch.serialization.register_package(
        0, lambda s: "cuda:0" if s.device.type == "cpu" else None, lambda s, loc: None
    )
    try:
        shutil.copytree(mlp["pickle"].path, tmp_path / "m")
        torch.save(
            mlp["pickle"].model,
            tmp_path / "m" / "data" / "model.pth",
            pickle_module=mlflow.pytorch.pickle_module,
        )
    finally:
        registry[:] = before
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / "m" / "data" / "model.pth", weights_only=False)
    model = load(tmp_path / "m", device="cpu")
    x = mlp["pickle"].example[0]
    np.testing.assert_allclose(predict(model, x), mlp["pickle"].expected(x), rtol=1e-5, atol=1e-6)


def test_cuda_requested_without_cuda_is_a_clear_error(mlp: dict[str, Saved]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA; tests/gpu covers it")
    with pytest.raises(ModelLoadError, match="CUDA is not available.*`auto` or `cpu`"):
        load(mlp["pt2"].path, device="cuda")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("fmt", ["pickle", "pt2"])
def test_reduced_precision_stays_close_to_fp32(mlp: dict[str, Saved], fmt: str, dtype: str) -> None:
    model = load(mlp[fmt].path, device="cpu", dtype=dtype)
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    got = predict(model, x)
    assert got.dtype == np.float32  # the signature's datatype, whatever the compute precision
    np.testing.assert_allclose(got, mlp[fmt].expected(x), rtol=0.05, atol=0.05)
    assert not np.allclose(got, mlp[fmt].expected(x), rtol=0, atol=1e-7), "the cast did not happen"


def test_code_paths_module_goes_on_sys_path(tmp_path: Path) -> None:
    x = np.ones((1, 4), np.float32)
    with b.code_module_net(tmp_path / "src", "tf_netdef_a", scale=2) as (net, module):
        mlflow.pytorch.save_model(
            net,
            str(tmp_path / "with"),
            serialization_format="pickle",
            code_paths=[str(module)],
            input_example=x,
        )
        mlflow.pytorch.save_model(
            net, str(tmp_path / "without"), serialization_format="pickle", input_example=x
        )
        expected = b.reference(net, x)
    with pytest.raises(ModelLoadError, match="ModuleNotFoundError.*tf_netdef_a.*code_paths"):
        load(tmp_path / "without")
    sys.modules.pop("tf_netdef_a", None)
    np.testing.assert_allclose(predict(load(tmp_path / "with"), x), expected, rtol=1e-6)


def test_state_dict_saved_as_model_pth(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pickle"].path, tmp_path / "m")
    torch.save(mlp["pickle"].model.state_dict(), tmp_path / "m" / "data" / "model.pth")
    with pytest.raises(ModelLoadError, match="state_dict.*log_model"):
        load(tmp_path / "m")


def _with_torch_version(src: Path, dest: Path, version: str) -> Path:
    shutil.copytree(src, dest)
    mlmodel = dest / "MLmodel"
    mlmodel.write_text(
        mlmodel.read_text().replace(f"pytorch_version: {torch.__version__}", f"pytorch_version: {version}")
    )
    assert version in mlmodel.read_text()
    return dest


def test_version_mismatch_warns_and_is_reported(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    model = load(_with_torch_version(mlp["pt2"].path, tmp_path / "m", "1.13.1"))
    params = asyncio.run(model.metadata()).parameters
    assert params is not None
    assert (
        getattr(params, "torchflow.version.torch") == f"saved 1.13.1, running {torch.__version__} (MISMATCH)"
    )


def test_strict_versions_turns_a_mismatch_into_a_load_error(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    with pytest.raises(ModelLoadError, match=r"torch: saved with 1.13.1.*strict_versions"):
        load(_with_torch_version(mlp["pt2"].path, tmp_path / "m", "1.13.1"), strict_versions=True)
    load(
        _with_torch_version(mlp["pt2"].path, tmp_path / "same", torch.__version__.split("+")[0] + "+cu121"),
        strict_versions=True,
    )


def test_a_model_that_fails_its_own_example_does_not_load(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pickle"].path, tmp_path / "m")
    (tmp_path / "m" / "input_example.json").write_text(json.dumps([[1.0, 2.0]]))
    with pytest.raises(ModelLoadError, match="input example"):
        load(tmp_path / "m")
    assert load(tmp_path / "m", warmup=False) is not None


def test_settings_come_from_extra_then_env(monkeypatch: pytest.MonkeyPatch, mlp: dict[str, Saved]) -> None:
    monkeypatch.setenv("MLSERVER_MODEL_TORCHFLOW_DTYPE", "bfloat16")
    assert load(mlp["pt2"].path).torchflow.dtype == "bfloat16"
    assert load(mlp["pt2"].path, dtype="keep").torchflow.dtype == "keep"


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"devcie": "cpu"}, "devcie"), ({"device": "tpu"}, "device"), ({"dtype": "int8"}, "dtype")],
)
def test_bad_settings_name_the_key(mlp: dict[str, Saved], extra: dict[str, str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=f"invalid TorchFlow settings.*{message}"):
        load(mlp["pt2"].path, **extra)


def test_unload_after_a_failed_load(tmp_path: Path) -> None:
    model = runtime(tmp_path / "missing")
    with pytest.raises(ModelLoadError):
        asyncio.run(model.load())
    assert asyncio.run(model.unload()) is True


@pytest.mark.parametrize("fmt", b.FORMATS)
def test_bare_weights_file_serves_without_a_signature(
    tmp_path: Path, mlp: dict[str, Saved], fmt: str
) -> None:
    """KServe's `pytorch` format: one weights file, no MLmodel, any name."""
    weights = next((mlp[fmt].path / "data").glob("model.*"))
    shutil.copy(weights, tmp_path / f"classifier{weights.suffix}")
    model = load(tmp_path)
    x = np.random.default_rng(2).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(predict(model, x), mlp[fmt].expected(x), rtol=1e-5, atol=1e-6)


def test_gpu_exported_pt2_loads_on_a_cpu_host(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    """No GPU here: the archive's recorded devices are rewritten to `cuda:0`, which is what
    torch.export.save records for a program exported on a GPU, so torch.export.load itself fails on
    this host (checked first); the runtime loads it onto the CPU."""
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA; the CPU-host case needs a host without it")
    shutil.copytree(mlp["pt2"].path, tmp_path / "m")
    weights = tmp_path / "m" / "data" / "model.pt2"
    with zipfile.ZipFile(weights) as src:
        entries = [(info, src.read(info.filename)) for info in src.infolist()]
    rewritten = 0
    with zipfile.ZipFile(weights, "w") as out:
        for info, data in entries:
            if info.filename.endswith(".json"):
                new = re.sub(
                    rb'"device":\s*\{"type":\s*"cpu",\s*"index":\s*null\}',
                    b'"device": {"type": "cuda", "index": 0}',
                    data,
                )
                rewritten += new != data
                data = new
            out.writestr(info, data)
    assert rewritten, "the archive recorded no device to rewrite"
    with pytest.raises((RuntimeError, AssertionError)):
        torch.export.load(str(weights))
    model = load(tmp_path / "m", device="cpu")
    x = np.random.default_rng(4).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(predict(model, x), mlp["pt2"].expected(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("variable", "value"), [("MAX_BODY_BYTES", "lots"), ("LOG_FORMAT", "xml")])
def test_a_bad_server_setting_fails_the_model_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, mlp: dict[str, Saved], variable: str, value: str
) -> None:
    """Never silently: a bad process-wide value used to fall back to the defaults."""
    from mlserver_torchflow.config import server_settings

    monkeypatch.setenv(f"MLSERVER_TORCHFLOW_{variable}", value)
    server_settings.cache_clear()
    try:
        with pytest.raises(
            ModelLoadError, match=f"invalid server settings \\({variable.lower()}: .*MLSERVER_TORCHFLOW_"
        ):
            runtime(mlp["pt2"].path)
    finally:
        monkeypatch.delenv(f"MLSERVER_TORCHFLOW_{variable}")
        server_settings.cache_clear()


def test_copies_loaded_before_a_failure_are_closed(
    mlp: dict[str, Saved], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the copies loaded (completing the interface, the facts) closes them rather
    than leaving their threads and device memory to a runtime that never served."""
    from mlserver_torchflow.engine.replicas import ReplicaSet
    from mlserver_torchflow.serving import loading

    sets: list[ReplicaSet] = []
    real_close = ReplicaSet.close

    async def close(self: ReplicaSet) -> None:
        sets.append(self)
        await real_close(self)

    def broken(*args: object) -> None:
        raise RuntimeError("completing the interface failed")

    monkeypatch.setattr(ReplicaSet, "close", close)
    monkeypatch.setattr(loading, "_complete", broken)
    model = runtime(mlp["pickle"].path)
    with pytest.raises(RuntimeError, match="completing the interface failed"):
        asyncio.run(model.load())
    assert len(sets) == 1 and sets[0].replicas == []
    assert "_batcher" not in model.__dict__
