#!/usr/bin/env python3
"""Checks that every trace in a tailgate `file` exporter output (`format: proto`) is whole.

Usage: check_traces.py FILE SPANS_PER_TRACE

The file holds ExportTraceServiceRequests, each as a 4-byte big-endian length and the message.
Counts the spans of every trace ID (the first field of each Span) and prints one JSON line:
traces, spans, whole traces (exactly SPANS_PER_TRACE spans), partial and oversized ones, and
a few partial trace IDs. Exits 1 when any trace is not whole.
"""

import collections
import json
import sys


def varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(buf, start, end):
    """Yields (field, start, end) of the length-delimited fields of a message."""
    pos = start
    while pos < end:
        key, pos = varint(buf, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = varint(buf, pos)
            yield key >> 3, pos, pos + length
            pos += length
        elif wire_type == 0:
            _, pos = varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire_type} at byte {pos}")


def main():
    path, per_trace = sys.argv[1], int(sys.argv[2])
    data = memoryview(open(path, "rb").read())
    counts = collections.Counter()
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        for f1, rs_start, rs_end in fields(data, pos, pos + length):
            if f1 != 1:
                continue
            for f2, ss_start, ss_end in fields(data, rs_start, rs_end):
                if f2 != 2:
                    continue
                for f3, span_start, span_end in fields(data, ss_start, ss_end):
                    if f3 != 2:
                        continue
                    # An SDK writes trace_id first: 0x0a 0x10 and 16 bytes.
                    if data[span_start] == 0x0A and data[span_start + 1] == 0x10:
                        counts[bytes(data[span_start + 2 : span_start + 18])] += 1
                    else:
                        for f4, id_start, id_end in fields(data, span_start, span_end):
                            if f4 == 1:
                                counts[bytes(data[id_start:id_end])] += 1
                                break
        pos += length
    whole = sum(1 for n in counts.values() if n == per_trace)
    partial = [t.hex() for t, n in counts.items() if n < per_trace]
    oversized = sum(1 for n in counts.values() if n > per_trace)
    print(
        json.dumps(
            {
                "traces": len(counts),
                "spans": sum(counts.values()),
                "whole_traces": whole,
                "partial_traces": len(partial),
                "oversized_traces": oversized,
                "partial_examples": partial[:5],
            }
        )
    )
    return 0 if whole == len(counts) else 1


if __name__ == "__main__":
    sys.exit(main())
