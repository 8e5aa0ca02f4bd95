"""KServe's real storage-initializer code against a local S3, then one `mlserver start` over what it left.

The initializer decides the layout under /mnt/models, not us. Two versions run, each in its
own virtualenv made by scripts/setup_kserve_envs.sh (their pins clash with the project's):

- `current`: the newest `kserve-storage` (`from kserve_storage import Storage`), canonical layout;
- `v0.14.1`: `kserve[storage]==0.14.1` (`from kserve.storage import Storage`), which flattens every
  file whose name starts with the URI's last segment to the root (PR 3205).

For each version: MLflow-run prefixes in pickle and pt2, a `.tar.gz` with a top folder as the only
object, and a prefix without a trailing slash that leaks its `-old` sibling. Every folder is made
read-only, its tree is checked against what the initializer is known to do (so the test proves the
flattening really happened), and all of them are served by one server whose V2 answers must equal
the in-process forward.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from tests import builders as b
from tests.s3 import CREDENTIALS, moto_server
from tests.s3 import client as s3_client
from tests.server import Server, write_model_settings

# The first test may build both virtualenvs (a few minutes on a fresh machine).
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup_kserve_envs.sh"
KSERVE_ENVS = Path(os.environ.get("KSERVE_ENVS") or REPO / ".kserve-envs")
# virtualenv folder -> the module the storage-initializer entrypoint of that version imports.
INITIALIZERS = {"current": "kserve_storage", "v0.14.1": "kserve.storage"}
SHORT = {"current": "cur", "v0.14.1": "k0141"}

BUCKET = "mlflow"
# Where each kind of model lives in the bucket (the URI is s3://BUCKET/<prefix>, no trailing slash).
PREFIXES = {
    # Two MLflow runs; the URI's last segment is "model", so 0.14.1 flattens every model.* file.
    "mlruns-pickle": "mlruns/1/3f9a0c2e5b7d4e1f8a6c9b0d2e4f6a81/artifacts/model",
    "mlruns-pt2": "mlruns/1/7d1e5a9c0b2f4c3e8a6d9f1b2c3d4e5f/artifacts/model",
    # Only object: mymodel.tar.gz, whose members sit under a top folder `mymodel/`.
    "archive-pt2": "archives/mlp",
    # models/churn-old/* (another model) matches too and lands as -old/*.
    "sibling-pickle": "models/churn",
}
KINDS = tuple(PREFIXES)
RTOL = ATOL = 1e-5

# What the initializer reads (both versions; see their `_download_s3`/`get_S3_config`): the endpoint
# from AWS_ENDPOINT_URL only (KServe's webhook derives it from the S3_ENDPOINT/S3_USE_HTTPS it also
# sets; the Python code never reads those two), S3_VERIFY_SSL=0|false to skip TLS checks, and the
# credentials/region (tests.s3.CREDENTIALS) through boto3's own chain.

DOWNLOAD = """
import json, sys
from {module} import Storage
done = {{}}
for uri, out in zip(sys.argv[1::2], sys.argv[2::2]):
    done[out] = Storage.download(uri, out)
print("DOWNLOADED " + json.dumps(done))
"""


@dataclass(frozen=True)
class Case:
    initializer: str
    kind: str

    @property
    def name(self) -> str:
        return f"{SHORT[self.initializer]}-{self.kind}"

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{PREFIXES[self.kind]}"

    @property
    def weights(self) -> str:
        return "model.pt2" if self.kind.endswith("pt2") else "model.pth"


CASES = [Case(i, k) for i in INITIALIZERS for k in KINDS]
IDS = [c.name for c in CASES]


@dataclass
class Uploaded:
    """What went into the bucket, and the modules the served answers are checked against."""

    mlp: nn.Module
    other: nn.Module  # the churn-old model: same shape, other weights
    objects: dict[str, int]  # every key in the bucket -> its size
    archive_members: dict[str, int]  # files inside mymodel.tar.gz -> size


def files(top: Path) -> dict[str, int]:
    """Every regular file below `top` (relative path -> size)."""
    top = top.resolve()
    return {str(p.relative_to(top)): p.stat().st_size for p in sorted(top.rglob("*")) if p.is_file()}


def tree(top: Path) -> str:
    return "\n".join(f"  {name} ({size} B)" for name, size in files(top).items())


@pytest.fixture(scope="module")
def kserve_envs() -> dict[str, Path]:
    """The two initializer virtualenvs, built (or checked, which is quick) by the setup script."""
    done = subprocess.run(
        ["bash", str(SETUP)],
        env={**os.environ, "KSERVE_ENVS": str(KSERVE_ENVS)},
        capture_output=True,
        text=True,
        timeout=840,
    )
    if done.returncode != 0:
        pytest.fail(f"{SETUP} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)
    pythons = {name: KSERVE_ENVS / name / "bin" / "python" for name in INITIALIZERS}
    for name, python in pythons.items():
        assert python.is_file(), f"{SETUP} left no {python} for {name}"
    return pythons


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free loopback port, in its own process."""
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def uploaded(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Uploaded:
    """Real MLflow models, each built once, uploaded the way the three kinds of URI expect them."""
    saved = tmp_path_factory.mktemp("saved")
    mlp, example = b.build(b.MLP), b.example_for(b.MLP)
    other = b.build(b.MLP)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    # Pinned requirements skip MLflow's inference, which reloads each model in a subprocess (~10 s
    # each); the files written are the same (MLflow adds its own pin).
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"cloudpickle=={cloudpickle.__version__}"]
    folders = {
        "pickle": b.save(mlp, saved / "mlp-pickle", "pickle", example=example, pip_requirements=reqs),
        "pt2": b.save(mlp, saved / "mlp-pt2", "pt2", example=example, pip_requirements=reqs),
        "other": b.save(other, saved / "other-pt2", "pt2", example=example, pip_requirements=reqs),
    }
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)

    objects: dict[str, int] = {}

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        objects[key] = len(body)

    def put_folder(folder: Path, prefix: str) -> None:
        for rel in files(folder):
            put(f"{prefix}/{rel}", (folder / rel).read_bytes())

    put_folder(folders["pickle"], PREFIXES["mlruns-pickle"])  # the MLflow 2 default
    put_folder(folders["pt2"], PREFIXES["mlruns-pt2"])  # the MLflow 3 default
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folders["pt2"], arcname="mymodel")
    put(f"{PREFIXES['archive-pt2']}/mymodel.tar.gz", buffer.getvalue())
    put_folder(folders["pickle"], PREFIXES["sibling-pickle"])
    put_folder(folders["other"], PREFIXES["sibling-pickle"] + "-old")
    members = {f"mymodel/{rel}": size for rel, size in files(folders["pt2"]).items()}
    return Uploaded(mlp, other, objects, members)


def initializer_env(endpoint: str) -> dict[str, str]:
    """A clean environment: nothing from this machine's AWS/S3/Python setup reaches the initializer."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "S3_", "STORAGE_", "PYTHON", "VIRTUAL_ENV"))
        and k not in ("awsAnonymousCredential", "CA_BUNDLE_CONFIGMAP_NAME")
    }
    env.update(CREDENTIALS)
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        S3_VERIFY_SSL="0",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONNOUSERSITE="1",
    )
    return env


@pytest.fixture(scope="module")
def downloaded(
    kserve_envs: dict[str, Path],
    s3_endpoint: str,
    uploaded: Uploaded,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Each initializer version downloads every URI into a fresh folder (its /mnt/models); then read-only."""
    mnt = tmp_path_factory.mktemp("mnt")
    out = {c.name: mnt / c.name for c in CASES}
    env = initializer_env(s3_endpoint)
    procs = {}
    for version, module in INITIALIZERS.items():
        args: list[str] = []
        for case in (c for c in CASES if c.initializer == version):
            out[case.name].mkdir()  # the pod's emptyDir exists, empty, before the initializer runs
            args += [case.uri, str(out[case.name])]
        procs[version] = subprocess.Popen(
            [str(kserve_envs[version]), "-c", DOWNLOAD.format(module=module), *args],
            env=env,
            cwd=mnt,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for version, proc in procs.items():
        try:
            log, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
        lines = [line for line in log.splitlines() if line.startswith("DOWNLOADED ")]
        assert proc.returncode == 0 and lines, (
            f"{version} initializer failed ({proc.returncode}):\n{log[-6000:]}"
        )
        returned = json.loads(lines[-1].removeprefix("DOWNLOADED "))
        for folder, model_dir in returned.items():
            assert Path(model_dir) == Path(folder), f"{version} returned {model_dir} for {folder}"
    for folder in out.values():
        b.make_read_only(folder)
    return out


def expected_files(case: Case, up: Uploaded) -> dict[str, int]:
    """The tree this initializer version leaves for this prefix (path -> size)."""
    prefix = PREFIXES[case.kind]
    last = prefix.rsplit("/", 1)[-1]
    out = {}
    for key, size in up.objects.items():
        if not key.startswith(prefix):  # a plain prefix match: siblings are in (§2.4)
            continue
        name = key.rsplit("/", 1)[-1]
        if case.initializer == "current":
            if size == 0:  # since 0.17 zero-byte objects are skipped (§2.6)
                continue
            out[key.removeprefix(prefix).lstrip("/")] = size
        elif name.startswith(last):  # 0.12.0-0.15.0-rc0 flattening (§2.2)
            out[name] = size
        else:
            out[key.removeprefix(prefix).lstrip("/")] = size
    if len(out) == 1 and next(iter(out)).endswith(".tar.gz"):  # a lone archive is unpacked (§2.3)
        return dict(up.archive_members)
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layout_is_what_the_initializer_makes(
    case: Case, downloaded: dict[str, Path], uploaded: Uploaded
) -> None:
    folder = downloaded[case.name]
    got = files(folder)
    assert got == expected_files(case, uploaded), f"{case.name} ({case.uri}):\n{tree(folder)}"
    weights = case.weights
    if case.kind.startswith("mlruns"):
        assert "MLmodel" in got
        if case.initializer == "v0.14.1":  # flattened: the weights moved, the rest of data/ stayed
            assert weights in got and f"data/{weights}" not in got
            if weights == "model.pth":  # pickle_module_info.txt stays where it was
                assert "data/pickle_module_info.txt" in got
            else:  # pt2 has nothing else in data/: the folder is not even created
                assert not (folder / "data").exists()
        else:
            assert f"data/{weights}" in got and weights not in got
    elif case.kind.startswith("archive"):  # unpacked, archive gone, top folder kept
        assert f"mymodel/data/{weights}" in got and "MLmodel" not in got
        assert not any(rel.endswith(".tar.gz") for rel in got)
    else:  # the sibling prefix leaked in beside the model
        assert {"MLmodel", f"data/{weights}", "-old/MLmodel", "-old/data/model.pt2"} <= set(got)


@dataclass
class Served:
    server: Server
    before: dict[str, dict[str, tuple[int, int]]]  # case name -> snapshot of its folder before serving


@pytest.fixture(scope="module")
def served(downloaded: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """ONE server over every downloaded folder; its models dir sits apart from the read-only folders."""
    repo = tmp_path_factory.mktemp("repo")
    before = {name: b.snapshot(folder) for name, folder in downloaded.items()}
    for name, folder in downloaded.items():
        write_model_settings(repo / name, name, folder)
    server = Server(repo).start()
    try:
        server.wait_ready(list(downloaded))
        yield Served(server, before)
    finally:
        server.stop()
    after = {name: b.snapshot(folder) for name, folder in downloaded.items()}
    assert after == before, "serving wrote into a downloaded model folder"


def infer(server: Server, name: str, x: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "input-0", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    status, reply = server.post(f"/v2/models/{name}/infer", body)
    assert status == 200, f"{name}: {status} {reply}\n{server.log()[-3000:]}"
    (output,) = reply["outputs"]
    assert output["datatype"] == "FP32"
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_served_answer_equals_the_model(case: Case, served: Served, uploaded: Uploaded) -> None:
    x = np.random.default_rng(7).random((5, 4), dtype=np.float32)
    got = infer(served.server, case.name, x)
    np.testing.assert_allclose(got, b.reference(uploaded.mlp, x), rtol=RTOL, atol=ATOL)
    if case.kind.startswith("sibling"):  # the leaked -old model would answer differently
        assert not np.allclose(got, b.reference(uploaded.other, x), rtol=RTOL, atol=ATOL)


def test_serving_wrote_nothing(served: Served, downloaded: dict[str, Path]) -> None:
    """Root ignores read-only bits: compare every file's size and mtime with all models loaded and used.

    The `served` fixture compares once more after the server stops.
    """
    x = np.ones((1, 4), np.float32)
    for name in downloaded:
        infer(served.server, name, x)
    after = {name: b.snapshot(folder) for name, folder in downloaded.items()}
    assert after == served.before
