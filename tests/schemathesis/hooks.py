"""schemathesis hooks for sessiond's API fuzzing run (scripts/api-fuzz.sh).

The session calls also take their JSON as text/plain (what sendBeacon sends). openapi.yaml
says so with a text/plain body of type string, which schemathesis would fill with any text;
the JSON variant already carries every body it should try, and the integration suite covers
text/plain, so the run leaves that variant out.
"""

import schemathesis


@schemathesis.hook
def before_load_schema(context, raw_schema):
    def drop_text_plain(node):
        if isinstance(node, dict):
            content = node.get("content")
            if isinstance(content, dict) and "application/json" in content:
                content.pop("text/plain", None)
            for value in node.values():
                drop_text_plain(value)
        elif isinstance(node, list):
            for value in node:
                drop_text_plain(value)

    drop_text_plain(raw_schema.get("paths", {}))
    drop_text_plain(raw_schema.get("components", {}).get("requestBodies", {}))


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
