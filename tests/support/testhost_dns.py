"""The name server of a test-host bridge network: answers A queries for the network's names only.

Part of the test-host harness (``tests/support/testhost_net.py`` starts it inside the network's
own namespace; standard library only). It reads ``ADDRESS NAME [ALIAS...]`` lines from a hosts
file (re-read when it changes) and is authoritative for every name: a known name gets its A
record (also for ANY; other types: an empty answer), any other name NXDOMAIN. That clean
negative answer is what a DNS server is needed for at all: Synapse's federation client asks for the
``_matrix-fed._tcp`` SRV record through Twisted's resolver, which (unlike getaddrinfo) never reads
/etc/hosts; with no server answering, the lookup times out after 60 s and federation fails.
Without SRV records Synapse falls back to the server name's A record on port 8448.

Usage: ``python3 testhost_dns.py HOSTS_FILE LISTEN_ADDRESS [PORT]`` (UDP only; answers fit).
"""

from __future__ import annotations

import os
import socket
import struct
import sys

TYPE_A = 1
TYPE_ANY = 255  # Twisted's getHostByName asks for ANY
CLASS_IN = 1
TTL = 5  # seconds: hosts may join the network while clients cache answers


def read_hosts(path: str) -> dict[str, bytes]:
    table: dict[str, bytes] = {}
    with open(path) as fh:
        for line in fh:
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2:
                packed = socket.inet_aton(fields[0])
                table.update((name.lower().rstrip("."), packed) for name in fields[1:])
    return table


def answer(query: bytes, table: dict[str, bytes]) -> bytes | None:
    """The reply to one query packet, or None for what is not a well-formed single question."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:  # a response, or not one question
        return None
    labels, pos = [], 12
    while pos < len(query) and query[pos]:
        length = query[pos]
        if length & 0xC0:  # compression pointers never appear in a question
            return None
        labels.append(query[pos + 1 : pos + 1 + length])
        pos += 1 + length
    pos += 1
    if pos + 4 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[pos : pos + 4])
    question = query[12 : pos + 4]
    name = b".".join(labels).decode("ascii", "replace").lower()
    address = table.get(name)
    records = b""
    if address is None:
        rcode = 3  # NXDOMAIN: no such name, whatever the type (SRV lookups end here)
    else:
        rcode = 0
        if qtype in (TYPE_A, TYPE_ANY) and qclass == CLASS_IN:
            records = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + address
    # QR, AA (authoritative), RD copied from the query; RA off: this server never recurses.
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode
    header = struct.pack("!HHHHHH", ident, reply_flags, 1, 1 if records else 0, 0, 0)
    return header + question + records


def serve(hosts_file: str, address: str, port: int = 53) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    table: dict[str, bytes] = {}
    seen: float | None = None
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            mtime = os.stat(hosts_file).st_mtime_ns
            if mtime != seen:
                table, seen = read_hosts(hosts_file), mtime
        except OSError:
            table, seen = {}, None
        reply = answer(query, table)
        if reply is not None:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 53)
