"""Saved plans: a stale plan says what moved (host, service, field, values then and now); pure, no host."""

from __future__ import annotations

import copy

from reconciler.planfile import stale_reasons


def pinned() -> dict:
    svc = {"version": "5.0.0", "artifact": "ab12", "config": "c0ffee", "unit": "0d0e", "secrets": "salted-1"}
    obs = {"current": "5.0.0", "releases": ["5.0.0"], "binary_sha": "ab12", "config": "c0ffee", "unit": "0d0e",
           "env_hash": "salted-1", "active": "active", "memory_max": "134217728", "running": "5.0.0",
           "drop_ins": ""}
    return {"spec": {"node1": {"api": dict(svc), "web": dict(svc)}},
            "hosts": {"node1": {"api": dict(obs), "web": dict(obs)}}, "state_serial": 7, "lineage": "L"}


def test_an_unchanged_plan_is_not_stale() -> None:
    assert stale_reasons(pinned(), pinned()) == []


def test_each_moved_fact_is_named_with_its_values() -> None:
    now = copy.deepcopy(pinned())
    now["spec"]["node1"]["api"]["version"] = "5.0.1"
    now["hosts"]["node1"]["web"]["active"] = "failed"
    now["hosts"]["node1"]["web"]["config"] = "beef"
    now["state_serial"] = 9
    assert stale_reasons(pinned(), now) == [
        "node1/api: version 5.0.0 → 5.0.1 (spec)",
        "node1/web: ActiveState active → failed (host)",
        "node1/web: config c0ffee → beef (host)",
        "recon's state moved (serial 7 → 9): another apply ran",
    ]


def test_secret_fingerprints_are_never_shown() -> None:
    now = copy.deepcopy(pinned())
    now["spec"]["node1"]["api"]["secrets"] = "salted-2"
    now["hosts"]["node1"]["api"]["env_hash"] = "salted-3"
    reasons = stale_reasons(pinned(), now)
    assert reasons == ["node1/api: secrets (sensitive) → (sensitive) (spec)",
                       "node1/api: env file (sensitive) → (sensitive) (host)"]
    assert not any("salted" in r for r in reasons)


def test_hosts_and_services_that_come_and_go() -> None:
    now = copy.deepcopy(pinned())
    del now["hosts"]["node1"]
    assert stale_reasons(pinned(), now) == ["host node1 could not be observed now"]
    now = copy.deepcopy(pinned())
    now["spec"]["node1"]["db"] = now["spec"]["node1"].pop("web")
    assert stale_reasons(pinned(), now) == ["node1/db: appeared in the spec", "node1/web: is gone from the spec"]


def test_a_plan_saved_by_an_older_recon_is_stale_not_a_crash() -> None:
    old = {**pinned(), "spec": "3f1c" * 16, "hosts": {"node1": "9a9a" * 16}}
    assert stale_reasons(old, pinned()) == ["the spec changed since the plan was made",
                                            "host node1: the host changed since the plan was made"]
