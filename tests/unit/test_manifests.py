"""The KServe manifests in kserve/: strict CRD-schema validation, then the facts the deployment depends on.

Every YAML document under kserve/ is validated against the openAPIV3Schema of its CRD the way
`kubectl apply --validate=strict` does it: unknown fields are errors (`additionalProperties: false` on every
object schema that lists `properties`, unless it preserves unknown fields), `x-kubernetes-int-or-string` takes
an integer or a string, `x-kubernetes-list-type: map|set` rejects duplicate keys, int32/int64 formats are
range-checked and `metadata` is checked as ObjectMeta (string labels and annotations).

The CRDs (kserve main, August 2026) are read from $KSERVE_CRDS_DIR, else from ../shared/kserve-crds beside the
repository; without them the schema tests skip and the other checks still run.

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
import json
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import ValidationError

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "kserve"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the InferenceService CRD is 2 MB: libyaml takes 1 s

RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
ISVC_KIND = "InferenceService"
IMPLEMENTATION = "mlserver_torchflow.TorchFlowRuntime"
GPU = "nvidia.com/gpu"
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}  # pkg/constants: InferenceServiceProtocol values
KNATIVE_PORT_NAMES = {"", "http1", "h2c"}
KNATIVE_PROGRESS_DEADLINE_S = 600  # knative config-deployment progress-deadline default
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Auto-selectable claims of KServe's own ClusterServingRuntimes on the formats this runtime serves
# (config/runtimes/*.yaml, kserve main August 2026): (format, version, priority), protocols.
BUILTIN_RUNTIMES: dict[str, dict[str, Any]] = {
    "kserve-mlserver": {"protocols": {"v2"}, "formats": [("mlflow", "1", 1), ("mlflow", "2", 1)]},
    "kserve-torchserve": {"protocols": {"v1", "v2", "grpc-v2"}, "formats": [("pytorch", "1", 2)]},
}

# Read by the image's CMD (`mlserver start "${MLSERVER_MODELS_DIR}"`), not by MLServer's settings.
IMAGE_ONLY_ENV = {"MLSERVER_MODELS_DIR"}


# ------------------------------------------------------------------------------------------------------------
# Loading


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted([*MANIFESTS.glob("*.yaml"), *MANIFESTS.glob("*.yml")]):
        with path.open() as handle:
            for index, doc in enumerate(yaml.load_all(handle, Loader=_LOADER)):
                if doc is not None:
                    docs.append((f"{path.name}#{index}", doc))
    return docs


DOCUMENTS = _documents()


def _of_kind(*kinds: str) -> list[tuple[str, dict[str, Any]]]:
    return [(ident, doc) for ident, doc in DOCUMENTS if doc.get("kind") in kinds]


def _ids(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [ident for ident, _ in items]


RUNTIMES = _of_kind(*RUNTIME_KINDS)
ISVCS = _of_kind(ISVC_KIND)


def _crd_dir() -> Path | None:
    candidates = [os.environ.get("KSERVE_CRDS_DIR"), REPO.parent / "shared" / "kserve-crds"]
    for candidate in candidates:
        if candidate and Path(candidate, "serving.kserve.io_inferenceservices.yaml").is_file():
            return Path(candidate)
    return None


@cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> {version: {"served": bool, "schema": openAPIV3Schema}}."""
    folder = _crd_dir()
    if folder is None:
        pytest.skip("KServe CRDs not found: set KSERVE_CRDS_DIR (see the module docstring)")
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        with path.open() as handle:
            for crd in yaml.load_all(handle, Loader=_LOADER):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                index[(spec["group"], spec["names"]["kind"])] = {
                    v["name"]: {"served": v.get("served", False), "schema": v["schema"]["openAPIV3Schema"]}
                    for v in spec["versions"]
                }
    return index


# ------------------------------------------------------------------------------------------------------------
# The strict validator


def strictify(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a structural schema that rejects unknown fields, like the API server's strict validation."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string") and not ({"anyOf", "oneOf"} & node.keys()):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for sub in node.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict | list):
                walk(node[key])
        for key in ("anyOf", "allOf", "oneOf"):
            walk(node.get(key, []))

    walk(schema)
    return schema


_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_SUBDOMAIN},
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """`x-kubernetes-list-type`: a `map` list has unique key tuples, a `set` list unique items."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen_items: set[str] = set()
        for item in instance:
            text = json.dumps(item, sort_keys=True)
            if text in seen_items:
                yield ValidationError(f"duplicate entry {item!r} in a list of type set")
            seen_items.add(text)
    elif list_type == "map":
        names = schema.get("x-kubernetes-list-map-keys", [])
        props = schema.get("items", {}).get("properties", {})
        seen: dict[tuple[Any, ...], int] = {}
        for index, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(name, props.get(name, {}).get("default")) for name in names)
            if key in seen:
                entry = dict(zip(names, key, strict=True))
                yield ValidationError(f"duplicate entry for key {entry}: items {seen[key]} and {index}")
            seen.setdefault(key, index)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type}
)
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**63


@cache
def _validator(api_version: str, kind: str, strict: bool = True) -> Any:
    group, _, version = api_version.rpartition("/")
    versions = _crds().get((group, kind))
    assert versions, f"no CRD for {kind} in group {group!r}"
    assert version in versions, f"{kind} has no version {version!r} (CRD has {sorted(versions)})"
    assert versions[version]["served"], f"{api_version} {kind} is not served"
    schema = versions[version]["schema"]
    if strict:
        schema = strictify(schema)
        schema["properties"]["metadata"] = OBJECT_META
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return StrictValidator(schema, format_checker=FORMATS)


def _where(error: ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".") or "<root>"


def schema_errors(doc: dict[str, Any], strict: bool = True) -> list[str]:
    validator = _validator(doc["apiVersion"], doc["kind"], strict)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_where(e)}: {e.message}" for e in errors]


# ------------------------------------------------------------------------------------------------------------
# Helpers over the manifests


def _container(runtime: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def _runtime_names() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in RUNTIMES}


def _deployment_mode(isvc: dict[str, Any]) -> str:
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "")
    return {"Serverless": "Knative", "RawDeployment": "Standard"}.get(mode, mode)


def _protocol(isvc: dict[str, Any]) -> str:
    return isvc["spec"]["predictor"]["model"].get("protocolVersion", "v1")


def _supports(runtime_spec: dict[str, Any], fmt: dict[str, Any], protocol: str, explicit: bool) -> bool:
    """KServe's RuntimeSupportsModel + IsProtocolVersionSupported."""
    labels = set()
    for entry in runtime_spec.get("supportedModelFormats", []):
        if explicit or entry.get("autoSelect"):
            labels.add(entry["name"])
            if "version" in entry:
                labels.add(f"{entry['name']}:{entry['version']}")
    wanted = f"{fmt['name']}:{fmt['version']}" if "version" in fmt else fmt["name"]
    protocols = runtime_spec.get("protocolVersions") or []
    return wanted in labels and (not protocols or protocol in protocols)


def _priority(runtime_spec: dict[str, Any], name: str) -> int | None:
    for entry in runtime_spec.get("supportedModelFormats", []):
        if entry["name"] == name:
            return entry.get("priority")
    return None


def _select(isvc: dict[str, Any], runtimes: list[tuple[str, dict[str, Any]]] | None = None) -> str:
    """The runtime KServe auto-selects for an InferenceService, from kserve/ plus the built-in runtimes."""
    model = isvc["spec"]["predictor"]["model"]
    fmt, protocol = model["modelFormat"], _protocol(isvc)
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {"ServingRuntime": [], "ClusterServingRuntime": []}
    for _, doc in RUNTIMES if runtimes is None else runtimes:
        if not doc["spec"].get("disabled"):
            groups[doc["kind"]].append((doc["metadata"]["name"], doc["spec"]))
    for name, claim in BUILTIN_RUNTIMES.items():
        spec = {
            "protocolVersions": sorted(claim["protocols"]),
            "supportedModelFormats": [
                {"name": f, "version": v, "autoSelect": True, "priority": p} for f, v, p in claim["formats"]
            ],
        }
        groups["ClusterServingRuntime"].append((name, spec))
    for kind in ("ServingRuntime", "ClusterServingRuntime"):
        candidates = [(n, s) for n, s in groups[kind] if _supports(s, fmt, protocol, explicit=False)]
        if not candidates:
            continue
        ranked = sorted(candidates, key=lambda c: -(_priority(c[1], fmt["name"]) or 0))
        top = [c for c in ranked if _priority(c[1], fmt["name"]) == _priority(ranked[0][1], fmt["name"])]
        assert len(top) == 1, f"{kind}s tie for {fmt}: {[n for n, _ in top]} (KServe then picks the newest)"
        return top[0][0]
    raise AssertionError(f"no runtime auto-selects {fmt} over {protocol}")


def _merged_ports(isvc: dict[str, Any], runtime: dict[str, Any]) -> list[dict[str, Any]]:
    """Strategic merge of the container ports (merge key containerPort): the runtime's, then the isvc's."""
    merged = {p["containerPort"]: dict(p) for p in _container(runtime).get("ports", [])}
    for port in isvc["spec"]["predictor"]["model"].get("ports", []):
        merged.setdefault(port["containerPort"], {}).update(port)
    return list(merged.values())


def _project_version() -> str:
    """[project] version from pyproject.toml (no tomllib: Python 3.10 is supported)."""
    text = (REPO / "pyproject.toml").read_text()
    project = text[text.index("[project]") :]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert match, "no [project] version in pyproject.toml"
    return match.group(1)


def _isvc_runtime(isvc: dict[str, Any]) -> dict[str, Any]:
    name = isvc["spec"]["predictor"]["model"].get("runtime") or _select(isvc)
    runtimes = _runtime_names()
    assert name in runtimes, f"runtime {name!r} is not in kserve/"
    return runtimes[name]


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
    names = _runtime_names()
    assert {"kserve-torchflow", "torchflow"} <= names.keys()
    assert len(names) == len(RUNTIMES), "two runtimes share a name"


@pytest.mark.parametrize(("ident", "doc"), DOCUMENTS, ids=_ids(DOCUMENTS))
def test_manifest_matches_its_crd_strictly(ident: str, doc: dict[str, Any]) -> None:
    errors = schema_errors(doc)
    assert not errors, f"{ident}:\n  " + "\n  ".join(errors)


def _runtime_doc() -> dict[str, Any]:
    return copy.deepcopy(_runtime_names()["kserve-torchflow"])


def test_strict_validator_rejects_an_unknown_field() -> None:
    doc = _runtime_doc()
    doc["spec"]["containerss"] = doc["spec"].pop("containers")
    errors = schema_errors(doc)
    assert any("'containerss' was unexpected" in e for e in errors), errors
    assert any("'containers' is a required property" in e for e in errors), errors


def test_strict_validator_rejects_a_nested_typo_that_the_plain_crd_schema_lets_through() -> None:
    doc = _runtime_doc()
    _container(doc)["readinessProbe"]["httpget"] = _container(doc)["readinessProbe"].pop("httpGet")
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
    _container(doc)["env"][0]["value"] = 1
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
    resources = _container(doc)["resources"]
    resources["limits"]["cpu"] = 4  # int-or-string: an integer is fine
    assert schema_errors(doc) == []
    resources["limits"]["memory"] = "8GB"  # not a Kubernetes quantity (8G or 8Gi)
    resources["requests"]["cpu"] = [1]
    _container(doc)["startupProbe"]["periodSeconds"] = 2**31  # int32
    _container(doc)["env"].append({"name": "MLSERVER_DEBUG", "value": "true"})  # list-type map keyed by name
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


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=_ids(RUNTIMES))
def test_runtime_container_and_model_env(ident: str, runtime: dict[str, Any]) -> None:
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert [c["name"] for c in runtime["spec"]["containers"]] == ["kserve-container"]
    env = _env(_container(runtime))
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == IMPLEMENTATION
    assert env["MLSERVER_MODEL_URI"] == env["MLSERVER_MODELS_DIR"] == "/mnt/models"
    assert env["MLSERVER_MODEL_NAME"] == "{{.Name}}"  # templated with the InferenceService name
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


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=_ids(RUNTIMES))
def test_runtime_env_names_are_settings_mlserver_reads(ident: str, runtime: dict[str, Any]) -> None:
    from mlserver_torchflow.settings import ENV_PREFIX, TorchFlowSettings

    known = _mlserver_env_names() | IMAGE_ONLY_ENV
    known |= {(ENV_PREFIX + name).upper() for name in TorchFlowSettings.model_fields}
    unknown = sorted(n for n in _env(_container(runtime)) if n.startswith("MLSERVER_") and n not in known)
    assert not unknown, f"no MLServer / TorchFlow setting reads {unknown}"


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=_ids(RUNTIMES))
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

    assert _select(isvc({"name": "mlflow"})) == "torchflow"  # the namespaced runtime comes first
    cluster = [(i, d) for i, d in RUNTIMES if d["kind"] == "ClusterServingRuntime"]
    for version in ("1", "2", "3"):
        assert _select(isvc({"name": "mlflow", "version": version}), cluster) == "kserve-torchflow"
    assert _select(isvc({"name": "mlflow"}), cluster) == "kserve-torchflow"
    assert _select(isvc({"name": "pytorch", "version": "2"}), cluster) == "kserve-torchflow"
    assert _select(isvc({"name": "pytorch"}), cluster) == "kserve-torchserve"
    v1 = {"spec": {"predictor": {"model": {"modelFormat": {"name": "mlflow"}}}}}
    with pytest.raises(AssertionError, match="no runtime auto-selects"):
        _select(v1, cluster)  # no protocolVersion: v1, which neither MLServer runtime speaks


def test_namespaced_runtime_has_the_cluster_runtime_spec() -> None:
    names = _runtime_names()
    assert names["torchflow"]["kind"] == "ServingRuntime"
    assert names["kserve-torchflow"]["kind"] == "ClusterServingRuntime"
    assert names["torchflow"]["spec"] == names["kserve-torchflow"]["spec"]


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=_ids(RUNTIMES))
def test_runtime_resources_image_and_gpu(ident: str, runtime: dict[str, Any]) -> None:
    container = _container(runtime)
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


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=_ids(RUNTIMES))
def test_runtime_probes(ident: str, runtime: dict[str, Any]) -> None:
    container = _container(runtime)
    http_port = int(_env(container)["MLSERVER_HTTP_PORT"])
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


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=_ids(RUNTIMES))
def test_runtime_security_and_writable_paths(ident: str, runtime: dict[str, Any]) -> None:
    container = _container(runtime)
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
    for name, value in _env(container).items():
        if name in {"MLSERVER_MODEL_URI", "MLSERVER_MODELS_DIR"} or not str(value).startswith("/"):
            continue
        assert any(value == p or value.startswith(p.rstrip("/") + "/") for p in writable), (
            f"{name}={value} is on the read-only root filesystem"
        )


@pytest.mark.parametrize(("ident", "runtime"), RUNTIMES, ids=_ids(RUNTIMES))
def test_runtime_metrics_annotations(ident: str, runtime: dict[str, Any]) -> None:
    annotations = runtime["spec"][
        "annotations"
    ]  # pod annotations; metadata.annotations would not reach the pod
    assert annotations["prometheus.kserve.io/port"] == _env(_container(runtime))["MLSERVER_METRICS_PORT"]
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    # without aggregation Knative's scrape annotation points at queue-proxy (9091) and never reaches MLServer
    assert annotations["serving.kserve.io/enable-metric-aggregation"] == "true"


# ------------------------------------------------------------------------------------------------------------
# InferenceServices


@pytest.mark.parametrize(("ident", "isvc"), ISVCS, ids=_ids(ISVCS))
def test_isvc_model_protocol_and_storage(ident: str, isvc: dict[str, Any]) -> None:
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert ISVC_NAME.match(isvc["metadata"]["name"]) and len(isvc["metadata"]["name"]) <= 63
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["protocolVersion"] == "v2", "without it KServe treats the model as v1"
    assert model["modelFormat"]["name"] == "mlflow"
    assert re.fullmatch(r"s3://[a-z0-9.-]+/mlruns/\d+/[0-9a-f]{32}/artifacts/model", model["storageUri"])
    assert predictor["serviceAccountName"], "the ServiceAccount carries the S3 credentials"
    runtime = _isvc_runtime(isvc)
    assert _supports(runtime["spec"], model["modelFormat"], _protocol(isvc), explicit="runtime" in model)


def test_explicit_runtime_exists_and_autoselect_has_none() -> None:
    explicit = [doc for _, doc in ISVCS if doc["spec"]["predictor"]["model"].get("runtime")]
    implicit = [doc for _, doc in ISVCS if not doc["spec"]["predictor"]["model"].get("runtime")]
    assert explicit and implicit
    names = _runtime_names()
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
        assert _isvc_runtime(doc)["metadata"]["name"] == "kserve-torchflow"


@pytest.mark.parametrize(("ident", "isvc"), ISVCS, ids=_ids(ISVCS))
def test_isvc_ports_fit_the_deployment_mode(ident: str, isvc: dict[str, Any]) -> None:
    mode = _deployment_mode(isvc)
    assert mode in {"Knative", "Standard"}, "say which mode: ports and autoscaling differ between them"
    runtime = _isvc_runtime(isvc)
    env = _env(_container(runtime))
    ports = _merged_ports(isvc, runtime)
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


@pytest.mark.parametrize(("ident", "isvc"), ISVCS, ids=_ids(ISVCS))
def test_isvc_autoscaling_fits_the_deployment_mode(ident: str, isvc: dict[str, Any]) -> None:
    predictor = isvc["spec"]["predictor"]
    mode = _deployment_mode(isvc)
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


STANDARD_ISVCS = [(ident, doc) for ident, doc in ISVCS if _deployment_mode(doc) == "Standard"]


@pytest.mark.parametrize(("ident", "isvc"), STANDARD_ISVCS, ids=_ids(STANDARD_ISVCS))
def test_standard_mode_scrapes_mlserver_directly(ident: str, isvc: dict[str, Any]) -> None:
    """No queue-proxy in Standard mode: KServe's scrape annotation would point at a port nobody serves."""
    annotations = isvc["metadata"]["annotations"]
    env = _env(_container(_isvc_runtime(isvc)))
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"
    assert annotations["prometheus.io/port"] == env["MLSERVER_METRICS_PORT"]
