"""Secrets: injected by name at the call boundary, never in the journal, audit, cassettes or
error messages."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from revex.errors import ActionFailed, ConfigError
from revex.runtime.effects.http_secrets import Secrets, env_name
from revex.runtime.runtime import Runtime
from revex.testing.rest_app import create_app, free_port, serve

TOKEN = "tok-5f1e9c0a7b3d4e2f"
OTHER = "env-secret-77aa19cd"


def all_state_bytes(state_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state_dir.rglob("*")) if p.is_file())


def test_secrets_are_injected_and_redacted_everywhere(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name("other"), OTHER)
    creds = tmp_path / "creds.toml"
    creds.write_text(f'[secrets]\napi = "{TOKEN}"\n')
    state_dir = tmp_path / "state"
    auth = {"Authorization": "Bearer {secret:api}"}
    with serve(create_app(token=TOKEN)) as base:
        with Runtime(state_dir, policy="permissive", credentials=creds) as rt, \
                rt.episode(tmp_path / "ws", http_mode="record", http_cassette="s") as ep:
            assert ep.http.get(base + "/items", headers=auth).status_code == 200
            created = ep.http.post(base + "/items", json={"name": "x"}, headers=auth)
            assert created.status_code == 201
            ep.http.put(base + "/items/1", json={"name": "y"}, headers=auth)
            # a literal credential and a secret in the query are redacted too
            ep.http.get(base + "/items", headers={"Authorization": f"Bearer {TOKEN}",
                                                  "X-Other": "{secret:other}"},
                        params={"key": "{secret:other}"})
            with pytest.raises(ActionFailed) as failed:
                ep.http.get(f"http://127.0.0.1:{free_port()}/x?k={{secret:api}}", headers=auth)
            with pytest.raises(ConfigError) as unknown:
                ep.http.get(base + "/items", headers={"Authorization": "{secret:nope}"})
            # rollback authenticates with the placeholder, never a journaled value
        assert httpx.get(base + "/_state", headers={"Authorization": f"Bearer {TOKEN}"}
                         ).json()["collections"]["items"] == []
    for text in (str(failed.value), repr(failed.value.__cause__), str(unknown.value)):
        assert TOKEN not in text and OTHER not in text
    blob = all_state_bytes(state_dir)
    assert TOKEN.encode() not in blob and OTHER.encode() not in blob
    assert b"{secret:api}" in (state_dir / "audit.jsonl").read_bytes()


def test_undo_after_commit_resolves_secrets_in_the_new_runtime(tmp_path: Path) -> None:
    with serve(create_app(token=TOKEN)) as base:
        auth = {"Authorization": "Bearer {secret:api}"}
        with Runtime(tmp_path / "state", policy="permissive",
                     credentials={"api": TOKEN}) as rt, \
                rt.episode(tmp_path / "ws", on_exit="commit") as ep:
            ep.http.post(base + "/items", json={"name": "x"}, headers=auth)
            episode_id = ep.id
        with Runtime(tmp_path / "state", policy="permissive", credentials={"api": TOKEN}) as rt2:
            assert rt2.undo(episode_id) == 1
        state = httpx.get(base + "/_state", headers={"Authorization": f"Bearer {TOKEN}"})
        assert state.json()["collections"]["items"] == []


def test_redaction_keeps_placeholders_and_replaces_literal_credentials() -> None:
    secrets = Secrets({"gh": TOKEN})
    assert secrets.resolve("Bearer {secret:gh}") == f"Bearer {TOKEN}"
    assert secrets.resolve("k=%7Bsecret:gh%7D") == f"k={TOKEN}"
    headers = secrets.redact_headers({"Authorization": "Bearer {secret:gh}",
                                      "Cookie": "session=abc", "X-Trace": f"id {TOKEN}"})
    assert headers == {"authorization": "Bearer {secret:gh}", "cookie": "***",
                       "x-trace": "id ***"}


def test_a_broken_credentials_file_names_the_line_not_the_value(tmp_path: Path) -> None:
    path = tmp_path / "creds.toml"
    path.write_text(f'api = "{TOKEN}\n')
    with pytest.raises(ConfigError) as info:
        Secrets(path)
    assert TOKEN not in str(info.value) and "line 1" in str(info.value)
