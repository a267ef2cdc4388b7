"""schemathesis hooks for sessiond's API fuzzing run (scripts/api-fuzz.sh).

The session calls also take their JSON sent as text/plain (what sendBeacon sends), and
openapi.yaml gives that variant the same schema as application/json: a body generated for it
is sent as its JSON text.
"""

import json

import schemathesis


@schemathesis.serializer("text/plain")
def json_as_text(ctx, value):
    return json.dumps(value).encode()


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but the refusals that the deployment's own limits, or rules across
    parameters, decide and a schema cannot state: a body over `body_limit` (413, a refusal as
    good as 400 for a request that breaks the schema too), and a stats window that ends before
    it starts or spans more than 31 days (400, documented on the operation)."""
    if response.status_code == 413:
        return False
    if "Schema-valid request rejected" not in failure.title:
        return True
    window_rules = ("at most 31 days", "must be before `to`")
    window = case.operation.path == "/v1/stats" and any(r in response.text for r in window_rules)
    return not window
