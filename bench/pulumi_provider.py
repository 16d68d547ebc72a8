"""What recon costs as a Pulumi resource: the provider's answers through `python -m pulumi.dynamic` (the
gRPC server the Pulumi engine launches), against `recon plan`, the command a user would otherwise run,
on a converged 1-host platform (9 services), in one run.

    sudo .venv/bin/python bench/pulumi_provider.py [--runs 7] [--keep] [--json FILE]

Boots one real test host (testhosts; TESTHOSTS_DIR/_NET/_PREFIX default /tmp/recon-pulumi-bench,
127.0.38, rpbench), applies the platform (`specs/platform.yaml` + `specs/overrides/local.yaml` + a hosts
layer) with `recon apply`, starts one provider server (as the engine does, once per `pulumi` run), then
times, interleaved round-robin, each `--runs` times:

  recon plan           the CLI process, `--detailed-exitcode` (must exit 0: converged)
  grpc Check           the provider's check over gRPC: recon's validation, no host
  grpc Diff            the provider's diff over gRPC (must answer DIFF_NONE): recon's plan, in a spawned
                       process (the provider server calls on gRPC threads; see docs/pulumi.md)
  direct diff          PlatformProvider().diff called on this process's main thread: the plan in place

Prints medians (min) and the ratios grpc Diff / recon plan and grpc Diff / direct diff (the spawn's cost).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import REPO, SPECS, TOKEN, arg_parser, hosts_layer, recon_argv, testhosts_env, timed

testhosts_env("/tmp/recon-pulumi-bench", "127.0.38", "rpbench")

from testhosts import TestHosts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, runs=7, keep="leave the host running (and skip booting if up)")
    args = ap.parse_args(argv)

    import grpc
    from google.protobuf import struct_pb2
    from pulumi.dynamic.dynamic import serialize_provider
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

    from reconciler import pulumi as rp

    work = Path(os.environ["TESTHOSTS_DIR"])
    pool = TestHosts()
    if not args.keep:
        pool.down()
    [host] = pool.up([1])
    files = [*SPECS, str(hosts_layer(pool, [host], work / "bench-hosts.yaml", batch_all=False))]
    state = str(work / "bench-state")
    env = {**os.environ, "VAULT_TOKEN": TOKEN, "NO_COLOR": "1"}
    os.environ["VAULT_TOKEN"] = TOKEN

    def run_cli(command: str, *extra: str) -> None:
        timed(recon_argv(command, files, state, *extra), env)

    server = subprocess.Popen([sys.executable, "-m", "pulumi.dynamic"], stdout=subprocess.PIPE, cwd=REPO, env=env)
    try:
        run_cli("apply", "--auto-approve")
        assert server.stdout is not None
        port = int(server.stdout.readline())
        stub = provider_pb2_grpc.ResourceProviderStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        stub.Configure(provider_pb2.ConfigureRequest(args=struct_pb2.Struct(), acceptSecrets=True))
        urn = "urn:pulumi:bench::recon::pulumi-python:dynamic/recon:Platform::platform"
        props = {"spec_files": files, "state": state, "__provider": serialize_provider(rp.PlatformProvider())}
        news = struct_pb2.Struct()
        news.update(props)
        outs = rp._outputs({"versions": {}, "serial": 0}, rp.parse_inputs(props))
        olds = struct_pb2.Struct()
        olds.update({**outs, "__provider": props["__provider"]})
        provider = rp.PlatformProvider()

        def grpc_check() -> None:
            assert not stub.Check(provider_pb2.CheckRequest(urn=urn, olds=olds, news=news)).failures

        def grpc_diff() -> None:
            res = stub.Diff(provider_pb2.DiffRequest(id="x", urn=urn, olds=olds, news=news))
            assert res.changes == provider_pb2.DiffResponse.DIFF_NONE, res

        def direct_diff() -> None:
            assert provider.diff("x", outs, props).changes is False

        cases: dict[str, Any] = {"recon plan": lambda: run_cli("plan", "--detailed-exitcode"),
                                 "grpc Check": grpc_check, "grpc Diff": grpc_diff, "direct diff": direct_diff}
        for fn in cases.values():     # warm-up: page cache, sshd, imports of the direct path
            fn()
        load_before = common.load()
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if not args.keep:
            pool.down()
    med = common.medians(times)
    print(common.runs_header(args.runs, load_before))
    print(common.times_table(times, "step"))
    print(f"\ngrpc Diff / recon plan: {med['grpc Diff'] / med['recon plan']:.2f}×; "
          f"grpc Diff / direct diff: {med['grpc Diff'] / med['direct diff']:.2f}×")
    common.write_json(args.json_out, {"runs": times, "median": med})
    return 0


if __name__ == "__main__":
    sys.exit(main())
