"""Check the KServe manifests in kserve/ offline: there is no Kubernetes cluster (nor API server) here.

`schema_errors` validates a document against the openAPIV3Schema of its CRD the way
`kubectl apply --validate=strict` does: unknown fields are errors (`additionalProperties: false` on every
object schema that lists `properties`, unless it preserves unknown fields), `x-kubernetes-int-or-string` takes
an integer or a string, `x-kubernetes-list-type: map|set` rejects duplicate keys, int32/int64 formats are
range-checked and `metadata` is checked as ObjectMeta (string labels and annotations).

The CRDs (kserve main, August 2026) are read from $KSERVE_CRDS_DIR, else from ../shared/kserve-crds beside the
repository; without them the schema checks skip. The manifests are loaded at import (`DOCUMENTS`, `RUNTIMES`,
`ISVCS`), and `auto_select` / `isvc_runtime` stand in for KServe's runtime selection.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import ValidationError

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "kserve"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the InferenceService CRD is 2 MB: libyaml takes 1 s

RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
ISVC_KIND = "InferenceService"

# Auto-selectable claims of KServe's own ClusterServingRuntimes on the formats this runtime serves
# (config/runtimes/*.yaml, kserve main August 2026): (format, version, priority), protocols.
BUILTIN_RUNTIMES: dict[str, dict[str, Any]] = {
    "kserve-mlserver": {"protocols": {"v2"}, "formats": [("mlflow", "1", 1), ("mlflow", "2", 1)]},
    "kserve-torchserve": {"protocols": {"v1", "v2", "grpc-v2"}, "formats": [("pytorch", "1", 2)]},
}


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


DOCUMENTS = _documents()  # (ident "file.yaml#index", document) for every YAML document under kserve/


def of_kind(*kinds: str) -> list[tuple[str, dict[str, Any]]]:
    return [(ident, doc) for ident, doc in DOCUMENTS if doc.get("kind") in kinds]


def ids(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The idents of (ident, document) pairs, for `pytest.mark.parametrize(ids=...)`."""
    return [ident for ident, _ in items]


RUNTIMES = of_kind(*RUNTIME_KINDS)
ISVCS = of_kind(ISVC_KIND)


def crd_dir() -> Path | None:
    candidates = [os.environ.get("KSERVE_CRDS_DIR"), REPO.parent / "shared" / "kserve-crds"]
    for candidate in candidates:
        if candidate and Path(candidate, "serving.kserve.io_inferenceservices.yaml").is_file():
            return Path(candidate)
    return None


@cache
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> {version: {"served": bool, "schema": openAPIV3Schema}}; skips the test without CRDs."""
    folder = crd_dir()
    if folder is None:
        pytest.skip("KServe CRDs not found: set KSERVE_CRDS_DIR (see tests/kserve_crds.py)")
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
def validator(api_version: str, kind: str, strict: bool = True) -> Any:
    """The validator of a served CRD version; `strict=False` gives the CRD's schema as it is."""
    group, _, version = api_version.rpartition("/")
    versions = crds().get((group, kind))
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
    """ "path: message" for every schema error of a document, sorted by path; [] when it is valid."""
    checker = validator(doc["apiVersion"], doc["kind"], strict)
    errors = sorted(checker.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_where(e)}: {e.message}" for e in errors]


# ------------------------------------------------------------------------------------------------------------
# Helpers over the manifests


def container_of(runtime: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def runtimes_by_name() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in RUNTIMES}


def deployment_mode(isvc: dict[str, Any]) -> str:
    """ "Knative" or "Standard" (the old names Serverless / RawDeployment mapped), else the annotation as is."""
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "")
    return {"Serverless": "Knative", "RawDeployment": "Standard"}.get(mode, mode)


def protocol_version(isvc: dict[str, Any]) -> str:
    """An InferenceService without protocolVersion is v1 (pkg/apis/serving/v1beta1/predictor_model.go)."""
    return isvc["spec"]["predictor"]["model"].get("protocolVersion", "v1")


def supports(runtime_spec: dict[str, Any], fmt: dict[str, Any], protocol: str, explicit: bool) -> bool:
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


def auto_select(isvc: dict[str, Any], runtimes: list[tuple[str, dict[str, Any]]] | None = None) -> str:
    """The runtime KServe auto-selects for an InferenceService, from kserve/ plus the built-in runtimes.

    As pkg/apis/serving/v1beta1/predictor_model.go: namespaced ServingRuntimes before ClusterServingRuntimes,
    each group by the format's priority (higher first), and only formats with autoSelect count.
    """
    model = isvc["spec"]["predictor"]["model"]
    fmt, protocol = model["modelFormat"], protocol_version(isvc)
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
        candidates = [(n, s) for n, s in groups[kind] if supports(s, fmt, protocol, explicit=False)]
        if not candidates:
            continue
        ranked = sorted(candidates, key=lambda c: -(_priority(c[1], fmt["name"]) or 0))
        top = [c for c in ranked if _priority(c[1], fmt["name"]) == _priority(ranked[0][1], fmt["name"])]
        assert len(top) == 1, f"{kind}s tie for {fmt}: {[n for n, _ in top]} (KServe then picks the newest)"
        return top[0][0]
    raise AssertionError(f"no runtime auto-selects {fmt} over {protocol}")


def isvc_runtime(isvc: dict[str, Any]) -> dict[str, Any]:
    """The runtime document an InferenceService runs on: the one it names, else the auto-selected one."""
    name = isvc["spec"]["predictor"]["model"].get("runtime") or auto_select(isvc)
    runtimes = runtimes_by_name()
    assert name in runtimes, f"runtime {name!r} is not in kserve/"
    return runtimes[name]


def merged_ports(isvc: dict[str, Any], runtime: dict[str, Any]) -> list[dict[str, Any]]:
    """Strategic merge of the container ports (merge key containerPort): the runtime's, then the isvc's."""
    merged = {p["containerPort"]: dict(p) for p in container_of(runtime).get("ports", [])}
    for port in isvc["spec"]["predictor"]["model"].get("ports", []):
        merged.setdefault(port["containerPort"], {}).update(port)
    return list(merged.values())
