"""The child process that resolves an MLflow model URI and downloads it into the cache, once.

Run by `engine.remote` as `python -m mlserver_torchflow.engine.remote_worker '<request json>'`; it prints
one JSON line. A child, not a thread, so that a download past its timeout can be killed outright, its
half-written folder removed, and MLflow's global state (tracking URI, retries) kept out of the server.

Resolution is MLflow's own: `MlflowClient` and `get_model_name_and_version` for `models:/` (version,
alias, stage, latest, logged-model id), the run for `runs:/`, and the artifact repository of any other
scheme. A cache entry is keyed by what the URI resolved to (the registry's version, the run, or for a
plain storage URI the listing of its files and sizes), written under `.partial/` and renamed into place:
an entry that exists is complete. Pinned references (`models:/<name>/<n>`, a run, a logged model) are
served from the cache without asking the server, so a restart survives a tracking-server outage.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

SOURCE = "source.json"
PARTIAL = ".partial"
_PINNED_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_LOGGED_MODEL = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)$")
_RUN = re.compile(r"^runs:/(?P<run>[^/]+)(?:/(?P<path>.*))?$")


def main(request: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    uri, cache = request["uri"], Path(request["cache"])
    if request.get("tracking_uri"):
        mlflow.set_tracking_uri(request["tracking_uri"])
    if request.get("registry_uri"):
        mlflow.set_registry_uri(request["registry_uri"])
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    _clear_dead_partials(cache)
    resolved = _resolve(uri, tracking, registry)
    entry = cache / resolved.pop("key")
    with _lock(cache, entry.name):
        if (entry / SOURCE).is_file():
            return {**json.loads((entry / SOURCE).read_text()), "entry": str(entry), "cached": True}
        return {**_download(uri, resolved, cache, entry, tracking, registry), "cached": False}


def _resolve(uri: str, tracking: str, registry: str) -> dict[str, Any]:
    """What `uri` points at now, and the cache key of that. Pinned references skip the server when an
    entry exists: their key is known from the URI alone, and the server is asked only to download."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if m := _LOGGED_MODEL.match(uri):
        return {"key": _key("models", registry, m["id"]), "resolved": uri, "logged_model": m["id"]}
    if m := _PINNED_VERSION.match(uri):
        name, version = m["name"], m["version"]
        key = _key("models", registry, name, version)
        return {"key": key, "resolved": uri, "name": name, "version": version}
    if uri.startswith("models:"):
        client = MlflowClient(tracking_uri=tracking, registry_uri=registry)
        got = get_model_name_and_version(client, uri)
        if len(got) == 1:
            return {"key": _key("models", registry, got[0]), "resolved": f"models:/{got[0]}"}
        name, version = got
        resolved = f"models:/{name}/{version}"
        key = _key("models", registry, name, version)
        return {"key": key, "resolved": resolved, "name": name, "version": version}
    if m := _RUN.match(uri):
        return {"key": _key("runs", tracking, m["run"], m["path"] or ""), "resolved": uri, "run": m["run"]}
    return {"key": _key("artifacts", uri, *_listing(uri)), "resolved": uri}


def _download(
    uri: str, resolved: dict[str, Any], cache: Path, entry: Path, tracking: str, registry: str
) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri=tracking, registry_uri=registry)
    facts: dict[str, Any] = {"uri": uri, "resolved": resolved["resolved"], "version": None}
    if "name" in resolved:
        mv = client.get_model_version(resolved["name"], resolved["version"])
        facts.update(version=str(mv.version), run_id=mv.run_id or None, source=mv.source)
    elif "logged_model" in resolved:
        logged = client.get_logged_model(resolved["logged_model"])
        facts.update(run_id=logged.source_run_id, source=logged.artifact_location)
    elif "run" in resolved:
        run = client.get_run(resolved["run"])
        facts.update(run_id=run.info.run_id, source=uri)
    else:
        facts.update(run_id=None, source=uri)
    partial = cache / PARTIAL / f"{os.getpid()}-{secrets.token_hex(4)}"
    partial.mkdir(parents=True)
    started = time.monotonic()
    got = Path(
        download_artifacts(
            artifact_uri=resolved["resolved"],
            dst_path=str(partial / "files"),
            tracking_uri=tracking,
            registry_uri=registry,
        )
    )
    if not got.exists() or (got.is_dir() and not any(got.iterdir())):
        shutil.rmtree(partial, ignore_errors=True)
        raise FileNotFoundError(f"nothing was downloaded from {resolved['resolved']}")
    facts["path"] = str(got.relative_to(partial))
    facts["seconds"] = round(time.monotonic() - started, 3)
    (partial / SOURCE).write_text(json.dumps(facts))
    entry.parent.mkdir(parents=True, exist_ok=True)
    os.rename(partial, entry)  # atomic: the entry appears complete, or not at all
    return {**facts, "entry": str(entry)}


def _listing(uri: str) -> list[str]:
    """Every file under a storage URI with its size: a new upload to the same URI is a new entry."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(uri)
    found: list[str] = []
    todo: list[str | None] = [None]
    while todo:
        for info in repo.list_artifacts(todo.pop()):
            if info.is_dir:
                todo.append(info.path)
            else:
                found.append(f"{info.path}:{info.file_size}")
    return sorted(found)


def _key(kind: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts[1:3]))[:60].strip("_-.") or kind
    return f"{kind}/{label}-{digest}"


@contextlib.contextmanager
def _lock(cache: Path, name: str):  # type: ignore[no-untyped-def]
    """One download per entry at a time, across processes (two copies, a worker, a restart)."""
    locks = cache / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clear_dead_partials(cache: Path) -> None:
    """Remove what a killed or crashed download left: a partial folder whose process is gone."""
    for partial in (cache / PARTIAL).glob("*-*") if (cache / PARTIAL).is_dir() else ():
        pid = int(partial.name.split("-", 1)[0]) if partial.name.split("-", 1)[0].isdigit() else 0
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def classify(err: BaseException) -> str:
    """unreachable | not_found | permission | other, from MLflow's, boto's or requests' error."""
    seen: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " ".join(f"{type(e).__name__} {e}" for e in seen)
    code = next((getattr(e, "error_code", None) for e in seen if getattr(e, "error_code", None)), None)
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or re.search(
        r"AccessDenied|Forbidden|\b40[13]\b|NoCredentials|Unauthorized|InvalidAccessKeyId|SignatureDoesNotMatch",
        text,
    ):
        return "permission"
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or re.search(
        r"NoSuchKey|NoSuchBucket|\b404\b|not found|No versions of model|FileNotFoundError|does not exist",
        text,
        re.IGNORECASE,
    ):
        return "not_found"
    if re.search(
        r"ConnectionError|Connection refused|Max retries exceeded|EndpointConnectionError|"
        r"Failed to establish|Name or service not known|timed out|ConnectTimeout|ReadTimeout",
        text,
    ):
        return "unreachable"
    return "other"


if __name__ == "__main__":
    try:
        answer = {"ok": True, **main(json.loads(sys.argv[1]))}
    except Exception as err:  # every failure becomes one JSON line the server turns into a message
        answer = {"ok": False, "kind": classify(err), "detail": f"{type(err).__name__}: {err}"[:2000]}
    print(json.dumps(answer), flush=True)
