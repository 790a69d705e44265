"""`loom keys create|list|revoke` against a running server, and the open mode with no key at all."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.contract.conftest import checked_client
from tests.support.server import REPO, LoomServer, free_port, healthy
from tests.support.wait import wait_for


def _status(server: LoomServer, key: str) -> int:
    return httpx.get(f"{server.base_url}/files", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def _key_id(server: LoomServer, project: str) -> str:
    listed = server.cli("keys", "list", "--project", project)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines() if line.strip()]
    assert len(rows) == 1, listed.stdout
    return rows[0][0]


def test_create_list_revoke(loom_server: LoomServer) -> None:
    project = f"cli-{time.monotonic_ns()}"
    created = loom_server.cli("keys", "create", "--project", project)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-") and "\n" not in key
    # The running server accepts it at once.
    client = checked_client(loom_server, key)
    made = client.beta.assistants.create(model="gpt-4o")
    assert client.beta.assistants.retrieve(made.id).id == made.id

    listed = loom_server.cli("keys", "list", "--project", project)
    assert listed.returncode == 0
    key_id, listed_project, hint, state = listed.stdout.strip().split("\t")
    assert listed_project == project and state == "active"
    assert key not in listed.stdout, "the list must not show the key itself"
    assert hint.endswith(key[-4:])
    assert project in loom_server.cli("keys", "list").stdout

    revoked = loom_server.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    # Answers are cached for at most 2 s: poll (generously) until the key stops working.
    wait_for(lambda: _status(loom_server, key) != 200, 15, "the revoked key to be refused", interval=0.2)
    assert _status(loom_server, key) == 401
    with pytest.raises(openai.AuthenticationError):
        client.beta.assistants.retrieve(made.id)
    assert loom_server.cli("keys", "list", "--project", project).stdout.strip().endswith("revoked")
    again = loom_server.cli("keys", "revoke", key_id)
    assert again.returncode == 1 and key_id in again.stderr
    # The configured key still works.
    assert _status(loom_server, "sk-test-default") == 200


def test_open_mode_then_first_key_closes_it() -> None:
    with LoomServer(api_keys=()) as server:
        for token in ("anything", "sk-whatever-123"):
            response = httpx.get(
                f"{server.base_url}/assistants",
                headers={"Authorization": f"Bearer {token}", "OpenAI-Beta": "assistants=v2"},
            )
            assert response.status_code == 200, response.text
        # A token is still needed (the SDK always sends one).
        assert httpx.get(f"{server.base_url}/files").status_code == 401
        anyone = checked_client(server, "sk-any")
        made = anyone.beta.assistants.create(model="gpt-4o")
        # All tokens are the same (default) project in open mode.
        assert checked_client(server, "sk-other").beta.assistants.retrieve(made.id).id == made.id

        created = server.cli("keys", "create", "--project", "default")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert _status(server, key) == 200
        wait_for(lambda: _status(server, "anything") != 200, 15, "open mode to end after a key was created", 0.2)
        assert _status(server, "anything") == 401
        assert checked_client(server, key).beta.assistants.retrieve(made.id).id == made.id

        # Revoking the last key must not reopen the server to every token.
        revoked = server.cli("keys", "revoke", _key_id(server, "default"))
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: _status(server, key) != 200, 15, "the revoked key to be refused", interval=0.2)
        time.sleep(2.5)  # past the 2 s cache: what the server decides now is what it will keep deciding
        assert _status(server, "anything") == 401
        assert _status(server, key) == 401


def _serve(server: LoomServer, port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loom.cli", "serve", "--port", str(port), "--log-level", "warning", *args],
        env=server.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(proc: subprocess.Popen[str], port: int) -> None:
    wait_for(lambda: healthy(proc, port), 60, "the server to start", interval=0.1)


def test_public_address_needs_a_key_or_insecure() -> None:
    server = LoomServer(api_keys=())
    proc = _serve(server, free_port(), "--host", "0.0.0.0")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0" in err and "--insecure" in err and "LOOM_API_KEYS" in err

    port = free_port()
    proc = _serve(server, port, "--host", "0.0.0.0", "--insecure")
    try:
        _wait_healthy(proc, port)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
    assert "accepting any bearer token" in err

    # With a key configured, a public address is fine without --insecure.
    keyed = LoomServer(api_keys=("sk-configured",))
    port = free_port()
    proc = _serve(keyed, port, "--host", "0.0.0.0")
    try:
        _wait_healthy(proc, port)
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
