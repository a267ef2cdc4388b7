"""Checks that every status openapi.yaml documents is reachable: answered to schemathesis's
run, or in the integration suite (which checks every answer against openapi.yaml and can
arrange what random requests cannot, such as a store outage for 503).

Usage: statuses.py openapi.yaml SUITE_SEEN CASSETTE.yaml... SUITE_SEEN holds the suite's
`METHOD TEMPLATE STATUS` lines (SESSIOND_SEEN_STATUSES); each cassette is a schemathesis VCR
report. Prints who reached what per operation, and fails naming each status nobody reached.
"""

import re
import sys
from collections import defaultdict
from urllib.parse import urlsplit

import yaml

def main(spec_path, suite_seen, cassettes):
    spec = yaml.safe_load(open(spec_path))
    documented = {}
    for path, item in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                documented[(method.upper(), path)] = (pattern, set(op["responses"]))
    seen, suite = defaultdict(set), defaultdict(set)
    for line in open(suite_seen):
        method, template, status = line.split()
        suite[(method, template)].add(status)
    for cassette in cassettes:
        # The interactions are plain YAML; the loader skips schemathesis's own tags.
        for interaction in yaml.load(open(cassette), Loader=yaml.BaseLoader)["http_interactions"]:
            request, response = interaction["request"], interaction.get("response")
            if not response:
                continue
            path = urlsplit(request["uri"]).path
            for (method, template), (pattern, _) in documented.items():
                if method == request["method"] and pattern.match(path):
                    seen[(method, template)].add(str(response["status"]["code"]))
    missing = []
    for key, (_, statuses) in sorted(documented.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        fuzz, tests = seen[key], suite[key]
        only_tests = sorted(tests - fuzz)
        print(f"{key[0]:8} {key[1]:32} schemathesis {','.join(sorted(fuzz)) or '-':28} "
              f"suite only {','.join(only_tests) or '-'}")
        missing += [f"{key[0]} {key[1]}: {s}" for s in sorted(statuses - fuzz - tests)]
    if missing:
        print("documented statuses nobody reached:\n  " + "\n  ".join(missing), file=sys.stderr)
        sys.exit(1)
    print("every documented status was reached, by schemathesis or by the integration suite")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
