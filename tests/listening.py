"""Which addresses and unix sockets processes listen on, read from ``/proc`` (no ``ss`` needed, nothing started).

A socket a process holds shows in ``/proc/PID/fd`` as ``socket:[INODE]``; ``/proc/net/tcp``, ``tcp6`` and ``unix``
list every socket of the network namespace with its inode, state and address. Joining the two gives a process's
listening sockets; ``/proc/net/tcp`` alone gives every listener on a port, whoever owns it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

TCP_LISTEN = "0A"  # the kernel's TCP_LISTEN state, in hex, as /proc/net/tcp writes it
UNIX_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags column: a listening unix socket


def socket_inodes(pids: set[int]) -> set[int]:
    """Inodes of the sockets ``pids`` hold open (a process gone or unreadable holds none)."""
    inodes = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue  # closed since the listing
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_address: str) -> tuple[str, int]:
    """(address, port) of ``/proc/net/tcp{,6}``'s ``ADDR:PORT``: the address in 32-bit words of host order."""
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port, 16)


def tcp_listeners() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket, IPv4 and IPv6."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue  # a kernel without IPv6
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == TCP_LISTEN:
                found[int(fields[9])] = _address(fields[1])
    return found


def listening(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of each TCP socket ``pids`` listen on."""
    held = socket_inodes(pids)
    return {where for inode, where in tcp_listeners().items() if inode in held}


def listening_on_ports(ports: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP listener on ``ports``, whichever process holds it."""
    return {(address, port) for address, port in tcp_listeners().values() if port in ports}


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1, also written as an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``)."""
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return (mapped or parsed).is_loopback


def unix_listeners(pids: set[int]) -> set[str]:
    """Paths of the unix sockets ``pids`` listen on."""
    held = socket_inodes(pids)
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[3], 16) & UNIX_ACCEPTING and int(fields[6]) in held:
            paths.add(" ".join(fields[7:]))  # a path may hold spaces
    return paths
