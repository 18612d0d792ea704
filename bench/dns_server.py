#!/usr/bin/env python3
"""A tiny authoritative DNS server for the benchmark scripts: answers A queries for one name
with the IPv4 addresses listed in a file (one per line, re-read on every query, so a script
changes the answer by rewriting the file), AAAA queries with no records, other names with
NXDOMAIN. UDP only, on 127.0.0.1.

Usage: dns_server.py PORT NAME ANSWER_FILE
"""

import socket
import struct
import sys


def parse_question(packet):
    """(query id, flags, qname labels lower-cased, qtype, end of question) or None."""
    if len(packet) < 12:
        return None
    qid, flags, qdcount = struct.unpack(">HHH", packet[:6])
    if qdcount != 1:
        return None
    pos, labels = 12, []
    while pos < len(packet):
        n = packet[pos]
        pos += 1
        if n == 0:
            break
        labels.append(packet[pos:pos + n].decode("ascii", "replace").lower())
        pos += n
    if pos + 4 > len(packet):
        return None
    qtype, _qclass = struct.unpack(">HH", packet[pos:pos + 4])
    return qid, flags, ".".join(labels), qtype, pos + 4


def answer(packet, name, answer_file):
    q = parse_question(packet)
    if q is None:
        return None
    qid, flags, qname, qtype, end = q
    question = packet[12:end]
    rd = flags & 0x0100
    if qname.rstrip(".") != name:
        header = struct.pack(">HHHHHH", qid, 0x8400 | rd | 3, 1, 0, 0, 0)
        return header + question
    addresses = []
    if qtype == 1:
        try:
            with open(answer_file) as f:
                addresses = [line.strip() for line in f if line.strip()]
        except OSError:
            addresses = []
    records = b""
    for address in addresses:
        records += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + socket.inet_aton(address)
    header = struct.pack(">HHHHHH", qid, 0x8400 | rd, 1, len(addresses), 0, 0)
    return header + question + records


def main():
    port, name, answer_file = int(sys.argv[1]), sys.argv[2].lower().rstrip("."), sys.argv[3]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        packet, peer = sock.recvfrom(4096)
        reply = answer(packet, name, answer_file)
        if reply is not None:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
