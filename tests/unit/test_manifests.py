"""The KServe manifests in kserve/: strict CRD-schema validation, then the facts the deployment depends on.

The schema validator and the helpers over the manifests (runtime selection, port merging) are in
tests/kserve_crds.py; without the CRDs the schema tests skip and the other checks still run.

The KServe / Knative rules encoded below come from their sources (kserve main, knative/serving main, Aug. 2026):
- runtime selection, pkg/apis/serving/v1beta1/predictor_model.go: an InferenceService without protocolVersion
  is v1; namespaced ServingRuntimes come before ClusterServingRuntimes, each group sorted by the format's
  priority (higher first); without `runtime`, only formats with autoSelect count.
- pkg/webhook/admission/servingruntime: two auto-selectable runtimes sharing a protocol may not claim the same
  format name + version at the same priority, and one runtime's entries for a format must share one priority.
- knative/serving pkg/apis/serving/k8s_validation.go: one container port per pod, named "", http1 or h2c.
- pkg/apis/serving/v1beta1/inference_service_validation.go: Knative's autoscaler takes scaleMetric concurrency
  or rps, the HPA of Standard mode cpu or memory; InferenceService names match [a-z]([-a-z0-9]*[a-z0-9])?.
"""

from __future__ import annotations

import copy
import importlib
import re
import tomllib
from typing import Any

import pytest

from tests.kserve_crds import (
    BUILTIN_RUNTIMES,
    DOCUMENTS,
    ISVCS,
    REPO,
    RUNTIMES,
    auto_select,
    container_of,
    deployment_mode,
    env_of,
    ids,
    isvc_runtime,
    merged_ports,
    protocol_version,
    runtimes_by_name,
    schema_errors,
    supports,
)

IMPLEMENTATION = "mlserver_torchflow.TorchFlowRuntime"
GPU = "nvidia.com/gpu"
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}  # pkg/constants: InferenceServiceProtocol values
KNATIVE_PORT_NAMES = {"", "http1", "h2c"}
KNATIVE_PROGRESS_DEADLINE_S = 600  # knative config-deployment progress-deadline default
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Read by the image's CMD (`mlserver start "${MLSERVER_MODELS_DIR}"`), not by MLServer's settings.
IMAGE_ONLY_ENV = {"MLSERVER_MODELS_DIR"}


def _project_version() -> str:
    """[project] version from pyproject.toml."""
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def _mlserver_env_names() -> set[str]:
    """Every environment variable MLServer's settings read (pydantic-settings: alias, else prefix + name)."""
    from mlserver.settings import (
        ENV_PREFIX_MODEL_SETTINGS,
        ENV_PREFIX_SETTINGS,
        ModelParameters,
        ModelSettings,
        Settings,
    )

    names = set()
    for cls, prefix in (
        (Settings, ENV_PREFIX_SETTINGS),
        (ModelSettings, ENV_PREFIX_MODEL_SETTINGS),
        (ModelParameters, ENV_PREFIX_MODEL_SETTINGS),
    ):
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if alias is None:
                names.add((prefix + field_name).upper())
            else:
                choices = getattr(alias, "choices", [alias])
                names.update(str(choice).upper() for choice in choices)
    return names


# ------------------------------------------------------------------------------------------------------------
# Schema validation


def test_the_manifests_are_there() -> None:
    kinds = sorted({doc["kind"] for _, doc in DOCUMENTS})
    assert kinds == ["ClusterServingRuntime", "InferenceService", "ServingRuntime"], kinds
    names = runtimes_by_name()
    assert {"kserve-torchflow", "torchflow"} <= names.keys()
    assert len(names) == len(RUNTIMES), "two runtimes share a name"


@pytest.mark.parametrize(("ident", "doc"), DOCUMENTS, ids=ids(DOCUMENTS))
def test_manifest_matches_its_crd_strictly(ident: str, doc: dict[str, Any]) -> None:
    errors = schema_errors(doc)
    assert not errors, f"{ident}:\n  " + "\n  ".join(errors)


def _runtime_doc() -> dict[str, Any]:
    return copy.deepcopy(runtimes_by_name()["kserve-torchflow"])


def test_strict_validator_rejects_an_unknown_field() -> None:
    doc = _runtime_doc()
    doc["spec"]["containerss"] = doc["spec"].pop("containers")
    errors = schema_errors(doc)
    assert any("'containerss' was unexpected" in e for e in errors), errors
    assert any("'containers' is a required property" in e for e in errors), errors


def test_strict_validator_rejects_a_nested_typo_that_the_plain_crd_schema_lets_through() -> None:
    doc = _runtime_doc()
    container_of(doc)["readinessProbe"]["httpget"] = container_of(doc)["readinessProbe"].pop("httpGet")
    assert schema_errors(doc, strict=False) == []
    errors = schema_errors(doc)
    assert any(e.startswith("spec.containers[0].readinessProbe:") and "'httpget'" in e for e in errors), (
        errors
    )


def test_strict_validator_rejects_wrong_types() -> None:
    doc = _runtime_doc()
    doc["spec"]["supportedModelFormats"][0]["priority"] = "2"
    doc["spec"]["annotations"]["prometheus.kserve.io/port"] = 8082
    doc["spec"]["protocolVersions"] = "v2"
    container_of(doc)["env"][0]["value"] = 1
    errors = schema_errors(doc)
    for where in (
        "spec.supportedModelFormats[0].priority: '2' is not of type 'integer'",
        "spec.annotations.prometheus.kserve.io/port: 8082 is not of type 'string'",
        "spec.protocolVersions: 'v2' is not of type 'array'",
        "spec.containers[0].env[0].value: 1 is not of type 'string'",
    ):
        assert where in errors, errors


def test_strict_validator_quantities_ints_lists_and_metadata() -> None:
    doc = _runtime_doc()
    resources = container_of(doc)["resources"]
    resources["limits"]["cpu"] = 4  # int-or-string: an integer is fine
    assert schema_errors(doc) == []
    resources["limits"]["memory"] = "8GB"  # not a Kubernetes quantity (8G or 8Gi)
    resources["requests"]["cpu"] = [1]
    container_of(doc)["startupProbe"]["periodSeconds"] = 2**31  # int32
    # env is a list-type map keyed by name
    container_of(doc)["env"].append({"name": "MLSERVER_DEBUG", "value": "true"})
    doc["metadata"]["lables"] = {"a": "b"}
    errors = "\n".join(schema_errors(doc))
    for needle in (
        "resources.limits.memory: '8GB' does not match",
        "resources.requests.cpu: [1] is not valid under any of the given schemas",
        "startupProbe.periodSeconds: 2147483648 is not a 'int32'",
        "spec.containers[0].env: duplicate entry for key {'name': 'MLSERVER_DEBUG'}",
        "metadata: Additional properties are not allowed ('lables' was unexpected)",
    ):
        assert needle in errors, errors


def test_wrong_api_version_is_refused() -> None:
    doc = _runtime_doc()
    doc["apiVersion"] = "serving.kserve.io/v1beta1"
    with pytest.raises(AssertionError, match="has no version 'v1beta1'"):
        schema_errors(doc)


# ------------------------------------------------------------------------------------------------------------
# Runtimes


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=ids(RUNTIMES))
def test_runtime_container_and_model_env(ident: str, runtime: dict[str, Any]) -> None:
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert [c["name"] for c in runtime["spec"]["containers"]] == ["kserve-container"]
    env = env_of(container_of(runtime))
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == IMPLEMENTATION
    assert env["MLSERVER_MODEL_URI"] == env["MLSERVER_MODELS_DIR"] == "/mnt/models"
    assert env["MLSERVER_MODEL_NAME"] == "{{.Name}}"  # templated with the InferenceService name
    assert env["MLSERVER_TORCHFLOW_RESTRICTED_APIS"] == "model-repository"  # nobody may unload it unasked
    assert (env["MLSERVER_HTTP_PORT"], env["MLSERVER_GRPC_PORT"], env["MLSERVER_METRICS_PORT"]) == (
        "8080",
        "8081",
        "8082",
    )
    assert env["MLSERVER_PARALLEL_WORKERS"] == "0"
    assert env["MLSERVER_DEBUG"] == "false"
    assert env["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "true"
    annotations = runtime["metadata"].get("annotations", {})
    assert "serving.kserve.io/server-type" not in annotations, "KServe would overwrite the implementation env"


def test_implementation_class_exists() -> None:
    from mlserver import MLModel

    module, _, name = IMPLEMENTATION.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, MLModel)


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=ids(RUNTIMES))
def test_runtime_env_names_are_settings_mlserver_reads(ident: str, runtime: dict[str, Any]) -> None:
    from mlserver_torchflow.config import ENV_PREFIX, SERVER_ENV_PREFIX, ServerSettings, TorchFlowSettings

    known = _mlserver_env_names() | IMAGE_ONLY_ENV
    known |= {(ENV_PREFIX + name).upper() for name in TorchFlowSettings.model_fields}
    known |= {(SERVER_ENV_PREFIX + name).upper() for name in ServerSettings.model_fields}
    unknown = sorted(n for n in env_of(container_of(runtime)) if n.startswith("MLSERVER_") and n not in known)
    assert not unknown, f"no MLServer / TorchFlow setting reads {unknown}"


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=ids(RUNTIMES))
def test_runtime_formats_priorities_and_protocols(ident: str, runtime: dict[str, Any]) -> None:
    spec = runtime["spec"]
    protocols = spec["protocolVersions"]
    assert {"v2", "grpc-v2"} <= set(protocols) <= PROTOCOLS
    formats = spec["supportedModelFormats"]
    assert {(f["name"], f.get("version")) for f in formats} >= {
        ("mlflow", "1"),
        ("mlflow", "2"),
        ("mlflow", "3"),
    }
    assert "pytorch" in {f["name"] for f in formats}
    auto = [f for f in formats if f.get("autoSelect")]
    for fmt in auto:
        assert fmt.get("priority", 0) >= 1, fmt
        if fmt["name"] == "mlflow":
            assert fmt["priority"] >= 2, "kserve-mlserver claims mlflow 1 and 2 at priority 1"
    # webhook: the entries of one format share one priority
    for name in {f["name"] for f in auto}:
        assert len({f.get("priority") for f in auto if f["name"] == name}) == 1, name
    # webhook: no auto-selected format/version/priority that a built-in runtime sharing a protocol claims
    if runtime["kind"] == "ClusterServingRuntime":
        for builtin, claim in BUILTIN_RUNTIMES.items():
            if not claim["protocols"] & set(protocols):
                continue
            for fmt in auto:
                clash = (fmt["name"], fmt.get("version"), fmt.get("priority")) in claim["formats"]
                assert not clash, f"{fmt} duplicates {builtin}: the webhook refuses the runtime"


def test_cluster_runtimes_do_not_clash_with_each_other() -> None:
    cluster = [doc for _, doc in RUNTIMES if doc["kind"] == "ClusterServingRuntime"]
    claims: dict[tuple[str, str | None, int | None], str] = {}
    for doc in cluster:
        for fmt in doc["spec"]["supportedModelFormats"]:
            if fmt.get("autoSelect"):
                key = (fmt["name"], fmt.get("version"), fmt.get("priority"))
                assert key not in claims, f"{doc['metadata']['name']} and {claims[key]} both claim {key}"
                claims[key] = doc["metadata"]["name"]


def test_auto_selection_prefers_torchflow_for_mlflow_and_leaves_unversioned_pytorch_to_torchserve() -> None:
    def isvc(fmt: dict[str, str]) -> dict[str, Any]:
        return {"spec": {"predictor": {"model": {"modelFormat": fmt, "protocolVersion": "v2"}}}}

    assert auto_select(isvc({"name": "mlflow"})) == "torchflow"  # the namespaced runtime comes first
    cluster = [(i, d) for i, d in RUNTIMES if d["kind"] == "ClusterServingRuntime"]
    for version in ("1", "2", "3"):
        assert auto_select(isvc({"name": "mlflow", "version": version}), cluster) == "kserve-torchflow"
    assert auto_select(isvc({"name": "mlflow"}), cluster) == "kserve-torchflow"
    assert auto_select(isvc({"name": "pytorch", "version": "2"}), cluster) == "kserve-torchflow"
    assert auto_select(isvc({"name": "pytorch"}), cluster) == "kserve-torchserve"
    v1 = {"spec": {"predictor": {"model": {"modelFormat": {"name": "mlflow"}}}}}
    with pytest.raises(AssertionError, match="no runtime auto-selects"):
        auto_select(v1, cluster)  # no protocolVersion: v1, which neither MLServer runtime speaks


def test_namespaced_runtime_has_the_cluster_runtime_spec() -> None:
    names = runtimes_by_name()
    assert names["torchflow"]["kind"] == "ServingRuntime"
    assert names["kserve-torchflow"]["kind"] == "ClusterServingRuntime"
    assert names["torchflow"]["spec"] == names["kserve-torchflow"]["spec"]


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=ids(RUNTIMES))
def test_runtime_resources_image_and_gpu(ident: str, runtime: dict[str, Any]) -> None:
    container = container_of(runtime)
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() <= resources["limits"].keys() | {"cpu", "memory"}
    project = _project_version()
    image, _, tag = container["image"].rpartition(":")
    assert image.endswith("/mlserver-torchflow")
    if runtime["metadata"]["name"].endswith("-cpu"):
        assert tag == f"{project}-cpu"
        assert GPU not in resources["limits"]
    else:
        assert tag == project, "the image tag follows the project version"
        assert str(resources["limits"][GPU]) == "1"
        assert GPU not in resources.get("requests", {}), "extended resources go under limits"


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=ids(RUNTIMES))
def test_runtime_probes(ident: str, runtime: dict[str, Any]) -> None:
    container = container_of(runtime)
    http_port = int(env_of(container)["MLSERVER_HTTP_PORT"])
    paths = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        assert probe["httpGet"]["port"] == http_port, kind
        paths[kind] = probe["httpGet"]["path"]
    assert paths == {
        "startupProbe": "/v2/health/ready",
        "readinessProbe": "/v2/health/ready",
        "livenessProbe": "/v2/health/live",
    }
    startup = container["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
    assert 60 <= budget < KNATIVE_PROGRESS_DEADLINE_S, budget
    assert len(container.get("ports", [])) <= 1, "Knative allows a single port per pod"


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=ids(RUNTIMES))
def test_runtime_security_and_writable_paths(ident: str, runtime: dict[str, Any]) -> None:
    container = container_of(runtime)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"]: v for v in runtime["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    for name, value in env_of(container).items():
        if name in {"MLSERVER_MODEL_URI", "MLSERVER_MODELS_DIR"} or not str(value).startswith("/"):
            continue
        assert any(value == p or value.startswith(p.rstrip("/") + "/") for p in writable), (
            f"{name}={value} is on the read-only root filesystem"
        )


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=ids(RUNTIMES))
def test_runtime_metrics_annotations(ident: str, runtime: dict[str, Any]) -> None:
    # pod annotations; metadata.annotations would not reach the pod
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == env_of(container_of(runtime))["MLSERVER_METRICS_PORT"]
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    # without aggregation Knative's scrape annotation points at queue-proxy (9091) and never reaches MLServer
    assert annotations["serving.kserve.io/enable-metric-aggregation"] == "true"


# ------------------------------------------------------------------------------------------------------------
# InferenceServices


@pytest.mark.parametrize(("ident", "isvc"), ISVCS, ids=ids(ISVCS))
def test_isvc_model_protocol_and_storage(ident: str, isvc: dict[str, Any]) -> None:
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert ISVC_NAME.match(isvc["metadata"]["name"]) and len(isvc["metadata"]["name"]) <= 63
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["protocolVersion"] == "v2", "without it KServe treats the model as v1"
    assert model["modelFormat"]["name"] == "mlflow"
    if "storageUri" in model:
        assert re.fullmatch(r"s3://[a-z0-9.-]+/mlruns/\d+/[0-9a-f]{32}/artifacts/model", model["storageUri"])
    else:  # served from the registry: the model's own env overrides the runtime's /mnt/models
        env = {e["name"]: e for e in model["env"]}
        assert re.fullmatch(r"models:/[\w.-]+(@[\w-]+|/\d+)", env["MLSERVER_MODEL_URI"]["value"])
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
        assert "secretKeyRef" in env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"], "no password in a manifest"
    assert predictor["serviceAccountName"], "the ServiceAccount carries the S3 credentials"
    runtime = isvc_runtime(isvc)
    assert supports(
        runtime["spec"], model["modelFormat"], protocol_version(isvc), explicit="runtime" in model
    )


def test_explicit_runtime_exists_and_autoselect_has_none() -> None:
    explicit = [doc for _, doc in ISVCS if doc["spec"]["predictor"]["model"].get("runtime")]
    implicit = [doc for _, doc in ISVCS if not doc["spec"]["predictor"]["model"].get("runtime")]
    assert explicit and implicit
    names = runtimes_by_name()
    for doc in explicit:
        name = doc["spec"]["predictor"]["model"]["runtime"]
        assert name in names, f"{doc['metadata']['name']} names runtime {name!r}, not in kserve/"
        assert names[name]["kind"] == "ClusterServingRuntime", (
            "an explicit cluster runtime works in any namespace"
        )


def test_gpu_isvc_asks_for_one_gpu() -> None:
    gpu = [
        doc
        for _, doc in ISVCS
        if GPU in doc["spec"]["predictor"]["model"].get("resources", {}).get("limits", {})
    ]
    assert gpu, "no InferenceService asks for a GPU"
    for doc in gpu:
        assert str(doc["spec"]["predictor"]["model"]["resources"]["limits"][GPU]) == "1"
        assert isvc_runtime(doc)["metadata"]["name"] == "kserve-torchflow"


@pytest.mark.parametrize(("ident", "isvc"), ISVCS, ids=ids(ISVCS))
def test_isvc_ports_fit_the_deployment_mode(ident: str, isvc: dict[str, Any]) -> None:
    mode = deployment_mode(isvc)
    assert mode in {"Knative", "Standard"}, "say which mode: ports and autoscaling differ between them"
    runtime = isvc_runtime(isvc)
    env = env_of(container_of(runtime))
    ports = merged_ports(isvc, runtime)
    grpc = [p for p in ports if "h2c" in p.get("name", "") or "grpc" in p.get("name", "")]
    if mode == "Knative":
        assert len(ports) <= 1, "Knative: more than one container port is set"
        assert all(p.get("name", "") in KNATIVE_PORT_NAMES for p in ports)
        assert all(p.get("protocol", "TCP") == "TCP" for p in ports)
        served = ports[0]["containerPort"] if ports else 8080
        wanted = env["MLSERVER_GRPC_PORT"] if grpc else env["MLSERVER_HTTP_PORT"]
        assert str(served) == wanted
    else:
        assert ports, "Standard mode: list the ports to expose them on the Service"
        assert str(ports[0]["containerPort"]) == env["MLSERVER_HTTP_PORT"] and ports[0] not in grpc
        assert [str(p["containerPort"]) for p in grpc] in ([], [env["MLSERVER_GRPC_PORT"]])


@pytest.mark.parametrize(("ident", "isvc"), ISVCS, ids=ids(ISVCS))
def test_isvc_autoscaling_fits_the_deployment_mode(ident: str, isvc: dict[str, Any]) -> None:
    predictor = isvc["spec"]["predictor"]
    mode = deployment_mode(isvc)
    assert 1 <= predictor.get("minReplicas", 1) <= predictor.get("maxReplicas", 1)
    metric = predictor.get("scaleMetric")
    if mode == "Knative":
        assert metric in (None, "concurrency", "rps")
        assert "deploymentStrategy" not in predictor
        if metric == "concurrency" and "containerConcurrency" in predictor:
            assert predictor["scaleTarget"] <= predictor["containerConcurrency"]
    else:
        assert metric in (None, "cpu", "memory")
        assert "containerConcurrency" not in predictor, "a Knative setting"


def test_autoselect_isvc_has_autoscaling_knobs() -> None:
    (isvc,) = [doc for _, doc in ISVCS if not doc["spec"]["predictor"]["model"].get("runtime")]
    predictor = isvc["spec"]["predictor"]
    assert {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"} <= predictor.keys()
    assert predictor["maxReplicas"] > predictor["minReplicas"]


STANDARD_ISVCS = [(ident, doc) for ident, doc in ISVCS if deployment_mode(doc) == "Standard"]


@pytest.mark.parametrize(("ident", "isvc"), STANDARD_ISVCS, ids=ids(STANDARD_ISVCS))
def test_standard_mode_scrapes_mlserver_directly(ident: str, isvc: dict[str, Any]) -> None:
    """No queue-proxy in Standard mode: KServe's scrape annotation would point at a port nobody serves."""
    annotations = isvc["metadata"]["annotations"]
    env = env_of(container_of(isvc_runtime(isvc)))
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"
    assert annotations["prometheus.io/port"] == env["MLSERVER_METRICS_PORT"]
