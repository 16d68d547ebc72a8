"""Imported before grpc (so before pulumi) by the Pulumi tests: grpc's fork support off in the test process.

The test process is gevent-patched (the host fixtures import recon's transport), so its subprocesses are
started with gevent's `os.fork`, which runs grpc's fork handlers once a gRPC channel exists; with them on,
about one child in ten died before exec (SIGABRT, "Epoll1Poller … epoll_wait error: Bad file descriptor"),
so a probe like `nsenter … curl` returned nothing. Measured with 100 `sh -c 'echo hi'` runs next to a
channel to `python -m pulumi.dynamic`: 15 and 10 failures with fork support on, 0 with it off. recon's
own processes never hold grpc and gevent together (docs/pulumi.md)."""

import os

os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
