"""The Pulumi provider against a real systemd host over SSH: its methods called directly (as the
dynamic provider server calls them), and the same provider driven through `python -m pulumi.dynamic`,
the gRPC server the Pulumi engine launches, with requests built the way the engine builds them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc_env  # noqa: F401  (before pulumi: grpc's fork support off, see there)
import pytest
from hosttools import CANARY, NAMES, Mini, _exec, _run_in

from reconciler import pulumi as rp
from reconciler.state import StateStore
from testhosts import TestHost

UNITS = [f"provisioning-{n}.service" for n in NAMES]


@pytest.fixture(autouse=True)
def _vault_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", CANARY)      # the spec's one secret, read at apply time


def _version(host: TestHost, port: int) -> str:
    """The version a service answers on its health endpoint, or why it does not answer (what systemd says)."""
    import json

    res = _run_in(host, f"curl -sS -m 3 http://{host.address}:{port}/health")
    if res.returncode == 0:
        return str(json.loads(res.stdout)["version"])
    why = _exec(host, "systemctl status --no-pager -n 20 'provisioning-*'; journalctl -n 40 --no-pager")
    return f"no answer: {res.stderr}\n{why}"


def _units_present(host: TestHost) -> list[str]:
    return [u for u in UNITS if _exec(host, f"test -e /etc/systemd/system/{u} && echo yes").strip()]


def test_provider_methods_create_diff_update_read_delete_on_a_real_host(
        testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    state = str(tmp_path / "state")
    provider = rp.PlatformProvider()
    news = provider.check({}, {"spec": m.doc(), "state": state})
    assert news.failures == []

    created = provider.create(news.inputs)
    outs = created.outs or {}
    assert created.id == StateStore(tmp_path / "state").load().lineage
    assert outs["versions"] == {"node1": dict.fromkeys(NAMES, "5.0.0")}
    assert outs["serial"] == StateStore(tmp_path / "state").load().serial > 0
    assert outs["summary"].startswith("Apply complete: 3 created,")
    assert [_version(testhost, p) for p in (8080, 8081, 8083)] == ["5.0.0"] * 3

    # nothing changed: no diff; a version bump: a diff naming that service
    same = provider.diff(created.id, outs, provider.check(outs, {"spec": m.doc(), "state": state}).inputs)
    assert same.changes is False and same.diffs == []
    m.versions["control-center"] = "5.0.1"
    bumped = provider.check(outs, {"spec": m.doc(), "state": state}).inputs
    diff = provider.diff(created.id, outs, bumped)
    assert diff.changes is True and diff.replaces == [] and diff.diffs == ["control-center"]
    assert "1 to replace" in diff.summary
    assert _version(testhost, 8081) == "5.0.0"          # a diff changes nothing

    updated = (provider.update(created.id, outs, bumped).outs or {})
    assert updated["versions"]["node1"]["control-center"] == "5.0.1"
    assert "1 replaced" in updated["summary"] and updated["serial"] > outs["serial"]
    assert _version(testhost, 8081) == "5.0.1"

    # refresh reads what runs: a service stopped behind recon's back reads as not running
    _exec(testhost, "systemctl stop provisioning-mcp-server.service")
    read = provider.read(created.id, updated)
    assert read.id == created.id and read.outs is not None
    assert read.outs["versions"]["node1"] == {"orchestrator": "5.0.0", "control-center": "5.0.1", "mcp-server": None}
    _exec(testhost, "systemctl start provisioning-mcp-server.service")

    # an update whose new release fails its health gate: rolled back, and the error says so
    m.versions["control-center"] = "5.0.2-unhealthy"
    with pytest.raises(rp.PlatformError, match=r"node1/control-center: rolled-back .*rolled back to 5\.0\.1") as bad:
        provider.update(created.id, updated, provider.check(updated, {"spec": m.doc(), "state": state}).inputs)
    assert "Apply failed:" in str(bad.value) and CANARY not in str(bad.value)
    assert _version(testhost, 8081) == "5.0.1"

    # something recon did not create stays, and delete removes the units and releases recon created
    _exec(testhost, "mkdir -p /opt/provisioning/keep-me && touch /etc/systemd/system/not-recons.service")
    provider.delete(created.id, updated)
    assert _units_present(testhost) == []
    for n in NAMES:
        assert _exec(testhost, f"test -e /opt/provisioning/{n} && echo yes").strip() == "", n
        assert _exec(testhost, f"test -e /etc/provisioning/{n}.toml && echo yes").strip() == "", n
    assert _exec(testhost, "test -d /opt/provisioning/keep-me && test -e /etc/systemd/system/not-recons.service "
                           "&& echo kept").strip() == "kept"
    assert StateStore(tmp_path / "state").load().hosts.get("node1", {}) == {}

    # a create whose release fails its health gate: the error names the service and the rollback
    m.versions["control-center"] = "5.0.2-unhealthy"
    with pytest.raises(rp.PlatformError) as failed:
        provider.create(provider.check({}, {"spec": m.doc(), "state": state}).inputs)
    text = str(failed.value)
    assert "node1/control-center: failed" in text and "no earlier release recorded healthy, service stopped" in text
    assert "node1/mcp-server: skipped" in text and text.splitlines()[-1].startswith("Apply failed: 1 created,")
    assert _exec(testhost, "systemctl is-active provisioning-control-center.service").strip() != "active"

    # no secret value in any output, nor in the kept inputs
    for value in (outs, updated, read.outs, diff.summary):
        assert CANARY not in repr(value)
    assert os.environ["VAULT_TOKEN"] == CANARY


# ------------------------------------------------------------------------ through the gRPC server
def _struct(value: dict[str, Any]) -> Any:
    """A property bag as the engine sends it: a protobuf Struct (numbers become floats)."""
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update(value)
    return s


def _plain(struct: Any) -> dict[str, Any]:
    from pulumi.runtime import rpc

    return rp.unwrap(rpc.deserialize_properties(struct))


def test_the_provider_through_the_dynamic_provider_grpc_server(testhost: TestHost, tmp_path: Path,
                                                               artifacts: Any) -> None:
    import grpc
    from pulumi.dynamic.dynamic import serialize_provider
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

    assert os.environ.get("GRPC_ENABLE_FORK_SUPPORT") == "false"      # see grpc_env
    m = Mini(tmp_path, [testhost], artifacts)
    state = str(tmp_path / "state")
    spec = m.doc()
    hosts = {"node1": spec.pop("hosts")["node1"]}      # the address as another resource's output would give it
    # the engine launches the plugin in the program's directory, with the user's environment
    server = subprocess.Popen([sys.executable, "-m", "pulumi.dynamic"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=tmp_path, env={**os.environ, "VAULT_TOKEN": CANARY})
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().strip())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = provider_pb2_grpc.ResourceProviderStub(channel)
        stub.Configure(provider_pb2.ConfigureRequest(args=_struct({}), acceptSecrets=True, acceptResources=True))
        urn = "urn:pulumi:test::recon-platform::pulumi-python:dynamic/recon:Platform::platform"
        provider = serialize_provider(rp.PlatformProvider())
        # the hosts input as a Pulumi secret (say the program made it one), wrapped the way the engine sends it
        secret_hosts = {rp.rpc._special_sig_key: rp.rpc._special_secret_sig, "value": hosts}
        inputs = {"spec": spec, "hosts": secret_hosts, "state": state, "targets": [], "__provider": provider}

        def check(olds: dict[str, Any], news: dict[str, Any]) -> Any:
            return stub.Check(provider_pb2.CheckRequest(urn=urn, olds=_struct(olds), news=_struct(news)))

        checked = check({}, inputs)
        assert list(checked.failures) == []
        news = _plain(checked.inputs)
        assert news["spec"]["services"]["orchestrator"]["port"] == 8080     # sent as 8080.0
        assert checked.inputs["hosts"][rp.rpc._special_sig_key] == rp.rpc._special_secret_sig   # still a secret

        created = stub.Create(provider_pb2.CreateRequest(urn=urn, properties=checked.inputs, timeout=300))
        outs = _plain(created.properties)
        assert created.id == StateStore(tmp_path / "state").load().lineage
        assert outs["versions"] == {"node1": dict.fromkeys(NAMES, "5.0.0")}
        assert outs["summary"].startswith("Apply complete: 3 created,")
        assert [_version(testhost, p) for p in (8080, 8081, 8083)] == ["5.0.0"] * 3
        # the kept inputs travel as a Pulumi secret (encrypted in the stack's state)
        assert created.properties[rp.INPUTS_KEY][rp.rpc._special_sig_key] == rp.rpc._special_secret_sig
        assert set(created.properties) == {"versions", "serial", "summary", rp.INPUTS_KEY, "__provider"}
        assert testhost.address not in str([created.properties[k] for k in ("versions", "serial", "summary")])

        # a bad input: recon's problem, with its spec path, as a CheckFailure
        wrong = {**inputs, "spec": {**spec, "services": {**spec["services"], "orchestrator": {
            **spec["services"]["orchestrator"], "port": "http"}}}}
        failures = {f.property: f.reason for f in check(outs, wrong).failures}
        assert "spec.services.orchestrator.port" in failures, failures

        m.versions["control-center"] = "5.0.1"
        bumped = {**inputs, "spec": {k: v for k, v in m.doc().items() if k != "hosts"}}
        checked2 = check(outs, bumped)
        diff = stub.Diff(provider_pb2.DiffRequest(id=created.id, urn=urn, olds=created.properties,
                                                  news=checked2.inputs))
        assert diff.changes == provider_pb2.DiffResponse.DIFF_SOME and list(diff.replaces) == []
        assert _version(testhost, 8081) == "5.0.0"

        updated = stub.Update(provider_pb2.UpdateRequest(id=created.id, urn=urn, olds=created.properties,
                                                         news=checked2.inputs, timeout=300))
        up = _plain(updated.properties)
        assert up["versions"]["node1"]["control-center"] == "5.0.1" and "1 replaced" in up["summary"]
        assert _version(testhost, 8081) == "5.0.1"
        nodiff = stub.Diff(provider_pb2.DiffRequest(id=created.id, urn=urn, olds=updated.properties,
                                                    news=checked2.inputs))
        assert nodiff.changes == provider_pb2.DiffResponse.DIFF_NONE

        read = stub.Read(provider_pb2.ReadRequest(id=created.id, urn=urn, properties=updated.properties))
        assert read.id == created.id and _plain(read.properties)["versions"] == up["versions"]

        # a failed health gate: the gRPC error carries recon's account of it
        m.versions["control-center"] = "5.0.2-unhealthy"
        checked3 = check(up, {**inputs, "spec": {k: v for k, v in m.doc().items() if k != "hosts"}})
        with pytest.raises(grpc.RpcError) as err:
            stub.Update(provider_pb2.UpdateRequest(id=created.id, urn=urn, olds=updated.properties,
                                                   news=checked3.inputs, timeout=300))
        assert "node1/control-center: rolled-back" in str(err.value.details())
        assert "rolled back to 5.0.1" in str(err.value.details())

        stub.Delete(provider_pb2.DeleteRequest(id=created.id, urn=urn, properties=updated.properties, timeout=300))
        assert _units_present(testhost) == []
        assert _exec(testhost, "ls /opt/provisioning 2>/dev/null").split() == []
        for response in (checked.inputs, created.properties, updated.properties, read.properties):
            assert CANARY not in str(response)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.returncode not in (0, -15):
            print(server.stderr.read().decode() if server.stderr else "")
