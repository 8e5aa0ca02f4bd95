"""docs/own-model.md, run as written: the commands of its "Serve it from a folder" section work, and give
the answers the page shows.

Every ```bash and ```python block of that section runs in order in a fresh folder holding only links to
`.venv` and `examples/` (the repository root, as the page assumes), with `.venv/bin` on PATH and the
ports 8080 / 8081 / 8082 of the text replaced by free ones (the server gets them from MLSERVER_HTTP_PORT
and the others, as the page tells readers; the script's settings.json leaves the ports out). The block
that runs `mlserver start` is started in the background and always stopped. Then:

- the infer curl answers both named outputs with the right shapes, equal to the saved model's own
  forward pass in this process (loaded with mlflow), and close to the answer the page prints;
- the metadata curl lists the signature's names and says the model warmed up (`torchflow.warmed_up`);
- the tritonclient snippet runs.

"The same from the registry" runs too, against a real `mlflow server` (tests/mlflow_server.py) standing in
for the page's `http://localhost:5000`: the folder section's curl commands then answer from
`models:/my-cnn@champion`, equal to the registered version as MLflow loads it.

A page edit that breaks a command, a renamed input, or a script that stops writing the input example
fails here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import pytest
import torch

from tests.mlflow_server import client_env
from tests.server import free_port, stop_group, wait_http

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "own-model.md"
SECTION = "Serve it from a folder"
MODEL = "my-model"  # the script's default --out, the name the page's commands use
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RTOL, ATOL = 1e-5, 1e-6
# Saving the model and starting the server take ~20 s on an idle 2-core machine; much more under load.
pytestmark = pytest.mark.timeout(600)


def section_blocks(markdown: str, heading: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block under `## heading`, up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"{PAGE.name} has no '## {heading}' section"
    return FENCE.findall(match.group(1))


def with_ports(text: str, ports: dict[str, int]) -> str:
    for default, port in ports.items():
        text = re.sub(rf"\b{default}\b", str(port), text)
    return text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder standing in for the repository root: only `.venv` and `examples/`, linked."""
    folder = tmp_path_factory.mktemp("own-model-page")
    (folder / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (folder / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"8080": free_port(), "8081": free_port(), "8082": free_port()}


@pytest.fixture(scope="module")
def env(ports: dict[str, int]) -> dict[str, str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLSERVER_", "MLFLOW_", "VIRTUAL_ENV"))
    }
    return {
        **environ,
        "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{environ.get('PATH', '')}",
        "MLSERVER_HTTP_PORT": str(ports["8080"]),
        "MLSERVER_GRPC_PORT": str(ports["8081"]),
        "MLSERVER_METRICS_PORT": str(ports["8082"]),
    }


def run_block(lang: str, code: str, cwd: Path, env: dict[str, str]) -> str:
    """Run one block; its stdout. A failing command fails the test with the block and its output."""
    command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else ["python", "-"]
    done = subprocess.run(
        command,
        input=code if lang == "python" else None,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"this {lang} block of {PAGE.name} failed ({done.returncode}):\n{code}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@contextlib.contextmanager
def section_run(
    section: str, workdir: Path, ports: dict[str, int], env: dict[str, str], subs: dict[str, str]
) -> Iterator[list[tuple[str, str, str]]]:
    """Every runnable block of `section`, in order, with `subs` applied to its text: (language, code as
    run, stdout); the `mlserver start` block runs in the background until the caller is done."""
    blocks = []
    for lang, code in section_blocks(PAGE.read_text(encoding="utf-8"), section):
        if lang in ("bash", "python"):
            for old, new in subs.items():
                code = code.replace(old, new)
            blocks.append((lang, with_ports(code, ports)))
    servers = [i for i, (_, code) in enumerate(blocks) if re.search(r"^\s*mlserver start", code, re.M)]
    assert len(servers) == 1, f"expected one block running `mlserver start`, found {len(servers)}"
    results: list[tuple[str, str, str]] = []
    for lang, code in blocks[: servers[0]]:
        results.append((lang, code, run_block(lang, code, workdir, env)))
    log = workdir / "page-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", blocks[servers[0]][1]],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(
            f"http://127.0.0.1:{ports['8080']}/v2/models/{MODEL}/ready", proc, log, "the page's server", 300
        )
        results.append(("bash", blocks[servers[0]][1], ""))
        for lang, code in blocks[servers[0] + 1 :]:
            results.append((lang, code, run_block(lang, code, workdir, env)))
        yield results
    finally:
        stop_group(proc, grace=30)


@pytest.fixture(scope="module")
def page_run(
    workdir: Path, ports: dict[str, int], env: dict[str, str]
) -> Iterator[list[tuple[str, str, str]]]:
    with section_run(SECTION, workdir, ports, env, {}) as results:
        yield results


def curl_answer(results: list[tuple[str, str, str]], infer: bool) -> dict[str, Any]:
    """The JSON printed by the section's (infer or metadata) curl block."""
    found = [
        json.loads(out)
        for lang, code, out in results
        if lang == "bash" and "curl" in code and f"/v2/models/{MODEL}" in code and ("/infer" in code) == infer
    ]
    assert len(found) == 1, f"expected one {'infer' if infer else 'metadata'} curl block, found {len(found)}"
    return found[0]


def test_the_answer_has_both_outputs_equal_to_the_models_own_forward(
    page_run: list[tuple[str, str, str]], workdir: Path
) -> None:
    answer = curl_answer(page_run, infer=True)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert sorted(outputs) == ["logits", "probs"]
    request = json.loads((workdir / MODEL / "request.json").read_text())
    arrays = {i["name"]: np.asarray(i["data"], np.float32).reshape(i["shape"]) for i in request["inputs"]}
    assert list(arrays) == ["image", "side"] and arrays["image"].shape[1:] == (3, 32, 32)
    rows = arrays["image"].shape[0]
    assert rows >= 2
    model = mlflow.pytorch.load_model(str(workdir / MODEL / "model"))  # the saved pt2, as MLflow loads it
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(a) for a in arrays.values()))
    for name in ("logits", "probs"):
        assert outputs[name]["shape"] == [rows, 3] and outputs[name]["datatype"] == "FP32"
        got = np.asarray(outputs[name]["data"], np.float32).reshape(rows, 3)
        np.testing.assert_allclose(got, expected[name].numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


def test_the_page_prints_the_answer_it_gets(page_run: list[tuple[str, str, str]]) -> None:
    answer = {o["name"]: o for o in curl_answer(page_run, infer=True)["outputs"]}
    shown = [
        json.loads(code)
        for lang, code in section_blocks(PAGE.read_text(encoding="utf-8"), SECTION)
        if lang == "json" and '"outputs"' in code
    ]
    assert len(shown) == 1, f"expected one ```json answer in the section, found {len(shown)}"
    printed = {o["name"]: o for o in shown[0]["outputs"]}
    assert printed.keys() == answer.keys()
    for name, output in printed.items():
        assert output["shape"] == answer[name]["shape"]
        np.testing.assert_allclose(output["data"], answer[name]["data"], atol=1e-4, err_msg=name)


def test_metadata_names_the_signature_and_the_model_warmed_up(page_run: list[tuple[str, str, str]]) -> None:
    metadata = curl_answer(page_run, infer=False)
    assert metadata["name"] == MODEL
    assert [(i["name"], i["shape"]) for i in metadata["inputs"]] == [
        ("image", [-1, 3, 32, 32]),
        ("side", [-1, 4]),
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "probs"]
    assert metadata["parameters"]["torchflow.format"] == "pt2"
    assert metadata["parameters"]["torchflow.warmed_up"] == "true"  # input_example.json reached the disk


def test_the_python_snippet_runs(page_run: list[tuple[str, str, str]]) -> None:
    snippets = [out for lang, _, out in page_run if lang == "python"]
    assert snippets, "the section has no Python snippet"
    assert all(out.strip() for out in snippets)


def test_the_registry_section_serves_the_registered_version(
    mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> None:
    """ "The same from the registry", against a real `mlflow server`: the page's address replaced by it.
    The folder section's curl commands then answer from `models:/my-cnn@champion`, resolved to version 1."""
    server = mlflow_server()
    workdir = tmp_path_factory.mktemp("own-model-registry")
    (workdir / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (workdir / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    ports = {"8080": free_port(), "8081": free_port(), "8082": free_port()}
    env = {
        **env,
        "MLSERVER_HTTP_PORT": str(ports["8080"]),
        "MLSERVER_GRPC_PORT": str(ports["8081"]),
        "MLSERVER_METRICS_PORT": str(ports["8082"]),
        "MLSERVER_TORCHFLOW_MODEL_CACHE": str(workdir / "cache"),
    }
    subs = {"http://localhost:5000": server.uri}
    with section_run("The same from the registry", workdir, ports, env, subs):
        curls = [
            with_ports(code, ports)
            for lang, code in section_blocks(PAGE.read_text(encoding="utf-8"), SECTION)
            if lang == "bash" and "curl" in code
        ]
        answers = [json.loads(run_block("bash", code, workdir, env)) for code in curls]
    settings = json.loads((workdir / MODEL / "model-settings.json").read_text())
    assert settings["parameters"]["uri"] == "models:/my-cnn@champion"
    infer = next(a for a in answers if "outputs" in a and "model_name" in a)
    metadata = next(a for a in answers if "outputs" in a and "model_name" not in a)
    assert metadata["parameters"]["torchflow.source.resolved"] == "models:/my-cnn/1"
    assert metadata["parameters"]["torchflow.warmed_up"] == "true"
    request = json.loads((workdir / MODEL / "request.json").read_text())
    arrays = [np.asarray(i["data"], np.float32).reshape(i["shape"]) for i in request["inputs"]]
    with pytest.MonkeyPatch.context() as mp:
        client_env(mp, server)  # the registered version, as MLflow itself loads it
        (workdir / "reference").mkdir()
        model = mlflow.pytorch.load_model("models:/my-cnn/1", dst_path=str(workdir / "reference"))
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(a) for a in arrays))
    for output in infer["outputs"]:
        got = np.asarray(output["data"], np.float32).reshape(output["shape"])
        np.testing.assert_allclose(got, expected[output["name"]].numpy(), rtol=RTOL, atol=ATOL)
