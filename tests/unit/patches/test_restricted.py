"""The restricted-API check and its settings: what is refused, what is let through, what the refusal says."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlserver_torchflow.config import ServerSettings
from mlserver_torchflow.errors import Forbidden
from mlserver_torchflow.patches import restricted


def settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    built = ServerSettings(**values)  # type: ignore[arg-type]
    monkeypatch.setattr(restricted, "server_settings", lambda: built)


def test_open_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings(monkeypatch)
    restricted.check("model-repository", {})
    restricted.check("statistics", {})


def test_the_header_opens_a_restricted_group_and_only_its_exact_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings(monkeypatch, restricted_apis="model-repository", restricted_header="X-Admin=abc")
    restricted.check("model-repository", {"x-admin": "abc"})  # header names are case-insensitive
    restricted.check("model-repository", [("X-ADMIN", "abc")])  # gRPC metadata: pairs
    restricted.check("statistics", {})  # not restricted
    for headers in ({}, {"x-admin": "ABC"}, {"x-admin": "abcd"}, {"other": "abc"}):
        with pytest.raises(Forbidden, match="'x-admin'") as err:
            restricted.check("model-repository", headers)
        assert "abc" not in str(err.value).replace("'x-admin'", "")  # the secret is never echoed
        assert err.value.status_code == 403


def test_without_a_header_a_restricted_group_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    settings(monkeypatch, restricted_apis="statistics")
    with pytest.raises(Forbidden, match="off on this server"):
        restricted.check("statistics", {"anything": "at all"})


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"restricted_apis": "repository"}, "unknown API group"),
        ({"restricted_header": "novalue"}, "key=value"),
    ],
)
def test_bad_settings_are_refused(values: dict[str, str], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        ServerSettings(**values)  # type: ignore[arg-type]


def test_grpc_methods_cover_both_repository_services() -> None:
    methods = restricted.GRPC_METHODS["model-repository"]
    assert "/inference.GRPCInferenceService/RepositoryModelUnload" in methods
    assert "/inference.model_repository.ModelRepositoryService/RepositoryModelUnload" in methods
