#!/usr/bin/env python3
"""Checks what reached the recording backend (`tailgate-sink`) in a scaling scenario.

Usage: scale_check.py RECORDS SPANS_PER_TRACE ACKNOWLEDGED

RECORDS holds 25-byte records (trace ID, span ID, sender index); RECORDS with the suffix
`.senders` names the senders. ACKNOWLEDGED is the number of spans the balancer acknowledged to
the load generator. Prints one JSON line: spans acknowledged, delivered (distinct), lost,
duplicated, traces, traces split (decided by more than one sampler), traces incomplete, and the
traces each sampler decided.
"""

import collections
import json
import os
import sys


def main():
    path, per_trace, acknowledged = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    senders_path = os.path.splitext(path)[0] + ".senders"
    try:
        with open(senders_path) as f:
            senders = [line.strip() for line in f]
    except OSError:
        senders = []
    with open(path, "rb") as f:
        data = f.read()
    seen = collections.Counter()
    deciders = collections.defaultdict(set)
    spans_of = collections.Counter()
    for i in range(0, len(data) - len(data) % 25, 25):
        trace, span, sender = data[i:i + 16], data[i + 16:i + 24], data[i + 24]
        key = trace + span
        seen[key] += 1
        if seen[key] == 1:
            spans_of[trace] += 1
        deciders[trace].add(sender)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    delivered = len(seen)
    per_sampler = collections.Counter()
    for ds in deciders.values():
        if len(ds) == 1:
            s = next(iter(ds))
            per_sampler[senders[s] if s < len(senders) else str(s)] += 1
    report = {
        "acknowledged": acknowledged,
        "delivered": delivered,
        "lost": acknowledged - delivered,
        "duplicated": duplicated,
        "traces": len(deciders),
        "split": sum(1 for ds in deciders.values() if len(ds) > 1),
        "incomplete": sum(1 for n in spans_of.values() if n != per_trace),
        "per_sampler": dict(sorted(per_sampler.items())),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
