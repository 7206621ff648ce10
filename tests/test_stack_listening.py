"""Every service of the local stack listens on loopback only (issue 23's test gaps).

The stack has no setting that opens a service to other hosts: SeaweedFS is started with ``-ip.bind=127.0.0.1``,
PostgreSQL with ``listen_addresses=127.0.0.1``, Prefect's server with ``--host 127.0.0.1``, and the workers serve
nothing. A listener on ``0.0.0.0``, ``::`` or a host's address (a flag dropped, a new service, a worker's health
server, a flow run that opens a port) would let any machine on the network at the data, the database or the API.

It reads the stack that ``tests/flows_stack.py`` starts once per session, so it adds no start of its own.
"""

from __future__ import annotations

import json

import pytest

from infra.local import localstack
from tests.flows_stack import KinshipStack, kinship_stack  # noqa: F401  (session fixture)
from tests.listening import is_loopback, listening, listening_on_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def stack_pids(state: dict) -> set[int]:
    """Every process ``infra/local/up`` recorded (still running its command) and all their descendants."""
    pids = set()
    for entry in state.get("pids", {}).values():
        if localstack.owns(entry["pid"], entry["argv"]):
            pids |= {entry["pid"], *localstack.descendants(entry["pid"])}
    return pids


def test_every_service_of_the_stack_listens_on_loopback_only(kinship_stack: KinshipStack) -> None:  # noqa: F811
    state = json.loads((kinship_stack.stack.state_dir / "state.json").read_text())
    ports = state["ports"]
    # the processes' own sockets, and whoever listens on one of the stack's ports (a process we cannot read)
    listeners = listening(stack_pids(state)) | listening_on_ports(set(ports.values()))
    served = {port for _, port in listeners}
    assert {ports["s3"], ports["prefect"]} <= served, (ports, listeners)  # read from the right processes
    assert sorted(where for where in listeners if not is_loopback(where[0])) == []
