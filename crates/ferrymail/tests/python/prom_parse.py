"""Parses a Prometheus text exposition (stdin) with prometheus_client's own
parser, the one Python exporters and tools use, and prints JSON: for every
sample, "name{label="value",...}" (labels sorted) -> value, plus the type of
every family under "__types__". A malformed exposition raises, and the
process exits non-zero with the parser's message."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
out = {"__types__": {}}
for family in text_string_to_metric_families(text):
    out["__types__"][family.name] = family.type
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
print(json.dumps(out))
