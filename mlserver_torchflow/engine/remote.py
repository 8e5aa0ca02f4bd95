"""Any MLflow model URI to a local folder: `models:/`, `runs:/`, `mlflow-artifacts:/`, `s3://`, `gs://`, ...

A local path (or `file:`) is served where it is. Anything else is resolved and downloaded once into the
cache by a child process (`remote_worker`) that is killed when it runs past `download_timeout`, so a
hanging tracking server or bucket fails the load in time instead of hanging the pod; then `locate` finds
the model in the downloaded tree exactly as in a local folder, every layout included.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..common import logger
from ..config import child_environment
from ..errors import ModelFetchError
from .remote_worker import PARTIAL

# MLflow retries a refused connection 7 times with backoff (minutes); two retries say "unreachable" in
# seconds. Set by the user, either variable wins.
CHILD_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
ADVICE = {
    "unreachable": "The tracking server (or the storage) could not be reached: check tracking_uri / "
    "MLFLOW_TRACKING_URI (or MLFLOW_S3_ENDPOINT_URL), and that the pod's network reaches it.",
    "not_found": "No such model, version, alias, run or artifact: check the name and the version or "
    "alias in the registry (the MLflow UI, or MlflowClient().search_model_versions), or the path in the bucket.",
    "permission": "The credentials were refused: set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
    "(or MLFLOW_TRACKING_TOKEN) for the tracking server, or the bucket's credentials (AWS_*, "
    "GOOGLE_APPLICATION_CREDENTIALS), with read access to this model.",
    "other": "See the detail; docs/registry.md lists what each scheme needs.",
}


@dataclass(frozen=True)
class Fetched:
    """Where a remote model landed, and what its URI resolved to (reported in the model's metadata)."""

    path: Path
    entry: Path
    uri: str
    resolved: str
    version: str | None
    run_id: str | None
    source: str | None
    cached: bool
    seconds: float

    def facts(self) -> dict[str, str]:
        found = {"uri": self.uri, "resolved": self.resolved, "version": self.version}
        found |= {"run_id": self.run_id, "source": self.source, "cache": str(self.path)}
        found |= {"cached": str(self.cached).lower()}
        return {f"source.{k}": v for k, v in found.items() if v}

    def evict(self) -> None:
        """Remove this entry from the cache (it turned out damaged): the next fetch downloads it again."""
        shutil.rmtree(self.entry, ignore_errors=True)


def is_remote(uri: str) -> bool:
    """True for a URI with a scheme other than `file` (a Windows drive letter is not one)."""
    scheme = urllib.parse.urlparse(uri).scheme
    return bool(scheme) and scheme != "file" and len(scheme) > 1


async def fetch(
    uri: str, cache: Path, tracking_uri: str | None, registry_uri: str | None, timeout: float
) -> Fetched:
    """Resolve and download `uri` into `cache` (reused when already there), within `timeout` seconds."""
    request = {"uri": uri, "cache": str(cache), "tracking_uri": tracking_uri, "registry_uri": registry_uri}
    _writable(cache, uri)
    started = time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlserver_torchflow.engine.remote_worker",
        json.dumps(request),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_environment(CHILD_DEFAULTS),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), timeout)
    except asyncio.CancelledError:
        _stop(child, cache)
        raise
    except TimeoutError:
        child.kill()
        await child.wait()
        _stop(child, cache)
        raise ModelFetchError(
            f"model URI {uri!r}: resolving and downloading it did not finish within download_timeout "
            f"({timeout:g} s); nothing was kept. Raise download_timeout for a large model, or check "
            f"that the tracking server and the storage answer. {ADVICE['unreachable']}"
        ) from None
    answer = _answer(out, err, child.returncode)
    if not answer.get("ok"):
        kind = answer.get("kind", "other")
        raise ModelFetchError(
            f"model URI {uri!r} could not be fetched ({kind.replace('_', ' ')}): "
            f"{str(answer.get('detail', '?')).rstrip('.')}. {ADVICE.get(kind, ADVICE['other'])}"
        )
    fetched = Fetched(
        path=Path(answer["entry"]) / answer["path"],
        entry=Path(answer["entry"]),
        uri=uri,
        resolved=answer["resolved"],
        version=answer.get("version"),
        run_id=answer.get("run_id"),
        source=answer.get("source"),
        cached=answer["cached"],
        seconds=time.monotonic() - started,
    )
    how = "reused the cached copy" if fetched.cached else "downloaded"
    logger.info(
        "model URI %s resolved to %s: %s %s in %.1fs",
        uri,
        fetched.resolved,
        how,
        fetched.path,
        fetched.seconds,
    )
    return fetched


def _stop(child: asyncio.subprocess.Process, cache: Path) -> None:
    """Kill the child and remove the half-written folder it leaves (named after its pid)."""
    if child.returncode is None:
        child.kill()
    for partial in (cache / PARTIAL).glob(f"{child.pid}-*"):
        shutil.rmtree(partial, ignore_errors=True)


def _answer(out: bytes, err: bytes, code: int | None) -> dict:
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        return {"ok": False, "kind": "other", "detail": f"the fetch exited with {code}: {' | '.join(tail)}"}


def _writable(cache: Path, uri: str) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / f".probe-{time.monotonic_ns()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ModelFetchError(
            f"model URI {uri!r} needs a writable cache folder, and {cache} is not ({err}). Set "
            "MLSERVER_TORCHFLOW_MODEL_CACHE to a writable folder (in a pod, an emptyDir volume)."
        ) from err
