# The bench's Python workload (bench/peers.js): builds N records (default 20,000), round-trips
# them through JSON, indexes, sorts and joins them. Deterministic: a seeded generator, no I/O.
import json
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
r = random.Random(1)
records = [
    {"id": i, "name": "item-%d" % i, "tags": ["t%d" % r.randrange(1000) for _ in range(4)], "score": r.random()}
    for i in range(n)
]
back = json.loads(json.dumps(records))
by_name = {rec["name"]: rec for rec in back}
by_tag = {}
for rec in back:
    for tag in rec["tags"]:
        by_tag.setdefault(tag, []).append(rec["id"])
ranked = sorted(back, key=lambda rec: (rec["score"], rec["name"]))
text = ",".join(rec["name"].upper() for rec in ranked[: n // 2])
print(len(by_name), len(by_tag), len(text))
