"""reconciler.pulumi without hosts: inputs as they cross gRPC (floats, secrets, unknowns), recon's
validation as CheckFailures, the provider's pickling, the example program under Pulumi's mocks, and
`recon` itself never importing pulumi."""

from __future__ import annotations

import asyncio
import base64
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc_env  # noqa: F401  (before pulumi: grpc's fork support off, see there)
import pulumi
import pytest
from hosttools import REPO, Mini
from pulumi.runtime import rpc

from reconciler import pulumi as rp
from reconciler import pulumi_steps as steps


class _FakeHost:
    """What Mini needs of a test host to write a spec entry (no host is contacted in this file)."""

    def spec_entry(self) -> dict[str, object]:
        return {"address": "127.0.0.9", "port": 22, "user": "root"}


def _spec(tmp_path: Path, artifacts: Any) -> dict[str, Any]:
    return Mini(tmp_path, [_FakeHost()], artifacts).doc()  # type: ignore[list-item]


def _as_over_grpc(value: Any) -> Any:
    """Every int as the float it becomes in a protobuf Struct."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: _as_over_grpc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_over_grpc(v) for v in value]
    return value


def test_whole_floats_from_grpc_become_ints_again(tmp_path: Path, artifacts: Any) -> None:
    spec = _spec(tmp_path, artifacts)
    spec["services"]["orchestrator"]["health"] = {"timeout_s": 2.5, "interval_s": 1.0}
    spec["services"]["orchestrator"]["env"] = {"RATIO": 2.0}
    inputs = rp.parse_inputs({"spec": _as_over_grpc(spec), "hosts": _as_over_grpc({"node1": {"port": 2222}})})
    assert inputs.spec is not None and inputs.hosts is not None
    orch = inputs.spec["services"]["orchestrator"]
    assert orch["port"] == 8080 and type(orch["port"]) is int
    assert type(inputs.spec["version"]) is int
    assert type(inputs.spec["defaults"]["limits"]["tasks_max"]) is int      # a count: integer or string
    assert type(inputs.spec["defaults"]["rollout"]["batch_size"]) is int
    assert type(orch["config"]["server"]["port"]) is int      # free-form config: the service must see 8080
    assert orch["health"]["timeout_s"] == 2.5 and orch["env"]["RATIO"] == 2
    assert type(orch["health"]["interval_s"]) is int         # a duration: 1 s either way
    assert inputs.spec["services"]["control-center"]["reload"] == {"signal": "HUP"}
    assert type(inputs.hosts["node1"]["port"]) is int
    assert steps.spec_problems(inputs) == []


def test_check_reports_each_problem_with_its_spec_path(tmp_path: Path, artifacts: Any) -> None:
    spec = _spec(tmp_path, artifacts)
    spec["services"]["orchestrator"]["port"] = 8080.5
    spec["services"]["mcp-server"]["depends_on"] = ["control-centre"]
    res = rp.PlatformProvider().check({}, {"spec": spec, "hosts": {"node1": {"port": "ssh"}},
                                           "targets": ["orchestrator"]})
    by = {f.property: f.reason for f in res.failures}
    assert {"spec.services.orchestrator.port", "spec.services.mcp-server.depends_on[0]", "hosts.node1.port"} <= set(by)
    assert all(p.startswith(("spec.services.", "hosts.")) for p in by), by
    assert by["spec.services.orchestrator.port"].startswith("pulumi input spec: services.orchestrator.port:")
    assert "control-centre" in by["spec.services.mcp-server.depends_on[0]"]
    assert by["hosts.node1.port"].startswith("pulumi input hosts: hosts.node1.port:")
    # a spec file's problems name the file and the line
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nservices:\n  x:\n    version: 1.0\n")
    failures = rp.PlatformProvider().check({}, {"spec_files": [str(bad)]}).failures
    assert failures and {f.property for f in failures} == {"spec_files"}
    assert any(f.reason.startswith(f"{bad}:4:") for f in failures), [f.reason for f in failures]
    # an unknown target, and malformed inputs
    good = _spec(tmp_path, artifacts)
    failures = rp.PlatformProvider().check({}, {"spec": good, "targets": ["orchestrater"]}).failures
    assert [f.property for f in failures] == ["targets"] and "'orchestrator'" in failures[0].reason
    failures = rp.PlatformProvider().check({}, {"spec_files": [], "spec": None}).failures
    assert [f.property for f in failures] == ["spec"] and "spec_files or spec is required" in failures[0].reason
    failures = rp.PlatformProvider().check({}, {"spec_files": "x.yaml", "spec": good, "targets": "api"}).failures
    assert sorted(f.property for f in failures) == ["spec", "targets"]


def test_check_returns_the_normalised_inputs_and_passes_unknowns_through(tmp_path: Path, artifacts: Any) -> None:
    spec = _spec(tmp_path, artifacts)
    res = rp.PlatformProvider().check({}, {"spec": _as_over_grpc(spec), "__provider": "x"})
    assert res.failures == [] and res.inputs["spec"]["services"]["orchestrator"]["port"] == 8080
    assert res.inputs["__provider"] == "x"
    # during a preview a VM's address is not known yet: nothing to validate or plan against
    unknown = {"spec": spec, "hosts": {"node1": {"address": rpc.UNKNOWN}}}
    assert rp.PlatformProvider().check({}, unknown).failures == []
    diff = rp.PlatformProvider().diff("id", {}, unknown)
    assert diff.changes is True and diff.replaces == []


def test_secret_wrapped_inputs_are_unwrapped_and_the_kept_inputs_are_a_secret(tmp_path: Path, artifacts: Any) -> None:
    spec = _spec(tmp_path, artifacts)
    inputs = rp.parse_inputs({"spec": spec, "hosts": rpc.wrap_rpc_secret({"node1": {"ssh_key": "/k"}})})
    assert inputs.hosts == {"node1": {"ssh_key": "/k"}}
    outs = rp._outputs({"versions": {}, "serial": 3, "summary": "s"}, inputs)
    assert set(outs) == {"versions", "serial", "summary", rp.INPUTS_KEY}
    assert rpc.is_rpc_secret(outs[rp.INPUTS_KEY])
    assert rp.stored_inputs(outs) == inputs


def test_the_provider_pickles_by_reference_and_loads_in_a_fresh_process() -> None:
    from pulumi.dynamic.dynamic import serialize_provider

    text = serialize_provider(rp.PlatformProvider())
    raw = base64.b64decode(text)
    assert b"reconciler.pulumi" in raw and len(raw) < 400     # the class by its module path, not its code
    code = ("import base64, dill, sys; p = dill.loads(base64.b64decode(sys.argv[1])); "
            "print(type(p).__module__, type(p).__name__)")
    out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["reconciler.pulumi", "PlatformProvider"]


def test_recon_never_imports_pulumi(tmp_path: Path) -> None:
    for path in (REPO / "reconciler").rglob("*.py"):
        if path.name == "pulumi.py" and path.parent.name == "reconciler":
            continue
        imports = re.findall(r"^\s*(?:import|from)\s+((?:reconciler\.)?pulumi)\b", path.read_text(), re.M)
        assert imports == [], path
    probe = ("import sys\nfrom reconciler.cli import main\ntry:\n    main(sys.argv[1:], prog_name='recon')\n"
             "except SystemExit:\n    pass\nprint('PULUMI=' + str(any(m.split('.')[0] == 'pulumi' "
             "for m in sys.modules)), file=sys.stderr)\n")
    # nor does the process a provider step runs in (it imports recon's side of the steps only)
    code = "import sys, reconciler.pulumi_steps; print(any(m.split('.')[0] == 'pulumi' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    for args in (["--help"], ["validate", "-f", str(REPO / "specs/platform.yaml")]):
        res = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=REPO)
        assert "PULUMI=False" in res.stderr, res.stderr


# ------------------------------------------------------------------------------ the example program
class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.resources.append(args)
        return "lineage-1", {**args.inputs, "versions": {"node1": {"orchestrator": "5.0.0"}}, "serial": 7,
                             "summary": "Apply complete: 9 created."}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


@pytest.fixture
def mocks() -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    m = _Mocks()
    pulumi.runtime.set_mocks(m, project="recon-platform", stack="test", preview=False)
    pulumi.runtime.set_all_config({"recon-platform:address": "10.1.2.3", "recon-platform:ssh_port": "2222"})
    yield m
    pulumi.runtime.set_all_config({})
    loop.close()


def test_the_example_program_puts_the_platform_on_the_vm_address(mocks: _Mocks) -> None:
    program = runpy.run_path(str(REPO / "examples/pulumi/__main__.py"))
    platform = program["platform"]
    assert isinstance(platform, rp.Platform)

    @pulumi.runtime.test
    def outputs() -> Any:
        def check(values: list[Any]) -> None:
            versions, serial, summary = values
            assert versions == {"node1": {"orchestrator": "5.0.0"}} and serial == 7
            assert summary.startswith("Apply complete")
        return pulumi.Output.all(platform.versions, platform.serial, platform.summary).apply(check)

    outputs()
    [res] = [r for r in mocks.resources if r.typ.endswith(":Platform")]
    assert res.typ == "pulumi-python:dynamic/recon:Platform" and res.name == "platform"
    node1 = res.inputs["hosts"]["node1"]
    assert node1["address"] == "10.1.2.3" and node1["port"] == 2222
    assert [Path(f).name for f in res.inputs["spec_files"]] == ["platform.yaml"]
    assert all(Path(f).is_file() for f in res.inputs["spec_files"])
    assert res.inputs["state"].endswith("examples/pulumi/state")
    assert "__provider" in res.inputs        # the pickled provider travels with the inputs
    # the spec the program names is one recon accepts, with the VM's address merged over the spec's
    inputs = rp.parse_inputs({k: v for k, v in res.inputs.items() if k != "__provider"})
    assert [p.render() for _, p in steps.spec_problems(inputs)] == []


def test_destroy_refuses_to_take_a_service_away_from_one_that_stays(tmp_path: Path, artifacts: Any) -> None:
    from reconciler.errors import ReconError
    from reconciler.runner import DestroyRequest, run_destroy

    spec = Mini(tmp_path, [_FakeHost()], artifacts).write()  # type: ignore[list-item]
    req = DestroyRequest(files=(str(spec),), services=("orchestrator",), state=str(tmp_path / "state"))
    with pytest.raises(ReconError, match="not removing orchestrator: control-center stays and depends on it"):
        run_destroy(req, None)  # type: ignore[arg-type]
