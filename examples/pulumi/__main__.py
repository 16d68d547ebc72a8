"""A Pulumi program: a VM, and the platform's nine services deployed onto it by recon, in one `pulumi up`.

`pulumi preview` shows recon's plan for the services (which ones change); `pulumi up` applies it, gated on
health with automatic rollback; `pulumi refresh` reads the running versions; `pulumi destroy` removes the
services recon created. See docs/pulumi.md.

The cloud part is commented out: these machines have no cloud account and no Pulumi CLI. Uncomment it
(and `pip install pulumi-aws`) to create the VM; until then the address comes from the stack's config
(`pulumi config set address 10.0.0.5`), so the program runs against a machine that already exists.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from reconciler.pulumi import Platform

HERE = Path(__file__).resolve().parent
SPECS = HERE.parents[1] / "specs"
config = pulumi.Config()


def machine_address() -> pulumi.Input[str]:
    """The VM's address: from the VM resource once the cloud part is uncommented, else from config."""
    # import pulumi_aws as aws
    #
    # vm = aws.ec2.Instance(
    #     "platform-node1",
    #     ami=config.require("ami"),                     # a Debian 12 image
    #     instance_type="t3.small",
    #     key_name=config.require("key_name"),          # the key recon logs in with (ssh_key below)
    #     vpc_security_group_ids=[config.require("security_group")],   # SSH (22) from where `pulumi up` runs
    #     tags={"Name": "platform-node1"},
    # )
    # return vm.private_ip
    return config.get("address") or "192.0.2.10"


def deploy(address: pulumi.Input[str]) -> Platform:
    """The platform's spec, with node1 on the VM's address (the `hosts` input is merged over the spec's)."""
    return Platform(
        "platform",
        spec_files=[str(SPECS / "platform.yaml")],
        hosts={"node1": {
            "address": address,
            "user": config.get("ssh_user") or "root",
            "port": config.get_int("ssh_port") or 22,
            "ssh_key": config.get("ssh_key") or "~/.ssh/id_ed25519",
            "known_hosts": config.get("known_hosts") or "~/.ssh/known_hosts",
        }},
        state=config.get("state") or str(HERE / "state"),   # a directory, or a state URL
        targets=config.get_object("targets") or [],
    )


platform = deploy(machine_address())
pulumi.export("versions", platform.versions)
pulumi.export("serial", platform.serial)
pulumi.export("summary", platform.summary)
