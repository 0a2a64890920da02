"""manifests/monitoring: ServiceMonitor, PrometheusRule and the Grafana dashboard.

No schema for the Prometheus Operator's CRDs is available offline, so these objects are
checked with targeted assertions: known field names only (as the API server's strict
field validation would demand), valid durations, PromQL that parses (promql-parser, a
PromQL parser from PyPI) and that names only metrics mlguard exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "manifests" / "monitoring" / "dashboards" / "mlguard.json"
README = REPO / "manifests" / "README.md"

# What mlguard exports: metric name -> (type, label -> allowed values or None for any).
METRICS = {
    "mlguard_admission_requests_total": ("counter", {
        "endpoint": {"mutate", "validate"},
        "kind": None,
        "operation": None,
        "outcome": {"allowed", "denied", "warned", "patched", "error"},
    }),
    "mlguard_admission_request_duration_seconds": ("histogram", {"endpoint": {"mutate", "validate"}}),
    "mlguard_policy_violations_total": ("counter", {"policy": None, "action": {"deny", "warn", "dryrun"}}),
    "mlguard_policy_dryrun_patches_total": ("counter", {"policy": None}),
    "mlguard_policy_reloads_total": ("counter", {"result": {"success", "failure"}}),
    "mlguard_policy_generation": ("gauge", {}),
    "mlguard_policy_last_reload_success": ("gauge", {}),
    "mlguard_certificate_reloads_total": ("counter", {"result": {"success", "failure"}}),
    "mlguard_certificate_expiry_timestamp_seconds": ("gauge", {}),
    "mlguard_cluster_state_age_seconds": ("gauge", {}),
    "mlguard_quota_reservations": ("gauge", {}),
    "mlguard_quota_reservations_expired_total": ("counter", {}),
    "mlguard_quota_reservations_unconfirmed_total": ("counter", {}),
    "mlguard_reviews_exempted_total": ("counter", {
        "reason": {"namespace", "namespace_label", "object_label", "user", "group", "service_account"},
    }),
    "mlguard_build_info": ("gauge", {"version": None, "commit": None}),
}
# Prometheus' own per-target series.
EXTERNAL = {"up": ("gauge", {})}
# Labels Prometheus adds to every scraped series (Prometheus Operator target labels).
TARGET_LABELS = {"job", "namespace", "pod", "instance", "service", "container", "le"}
# The prometheus-operator Duration pattern.
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
# Grafana variables, replaced with something PromQL accepts before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": "mlguard-system"}

SERVICE_MONITOR_SPEC = {
    "selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
    "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "attachMetadata", "scrapeProtocols", "keepDroppedTargets", "scrapeClass", "bodySizeLimit",
}
ENDPOINT = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings",
    "proxyUrl", "followRedirects", "enableHttp2", "filterRunning",
}
RELABEL = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RULE_GROUP = {"name", "interval", "rules", "partial_response_strategy", "limit", "query_offset", "labels"}
RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def selectors(expr: str):
    """Every vector selector in a PromQL expression (after parsing it)."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    try:
        ast = promql_parser.parse(expr)
    except ValueError as e:
        raise AssertionError(f"PromQL does not parse: {e}\n{expr}") from None
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(ast, visit)
    return found


def check_promql(expr: str) -> set[str]:
    """Assert that EXPR only uses known metrics, labels and label values; return the names."""
    names = set()
    found = selectors(expr)
    assert found, f"no metric in {expr!r}"
    for sel in found:
        assert sel.name, f"selector without a metric name in {expr!r}"
        name = sel.name
        known = {**METRICS, **EXTERNAL}
        base = name
        if name not in known:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in known, f"unknown metric {name!r} in {expr!r}"
            assert known[base][0] == "histogram", f"{name!r}: {base} is a {known[base][0]}, not a histogram"
        names.add(name)
        labels = known[base][1]
        for m in sel.matchers.matchers:
            assert m.name in labels or m.name in TARGET_LABELS, f"{name} has no label {m.name!r}"
            allowed = labels.get(m.name)
            if allowed is None:
                continue
            op = str(m.op)
            if op.endswith("Equal") and not op.endswith("NotEqual"):
                values = {m.value}
            elif op.endswith("Re"):
                values = set(m.value.split("|"))
            else:
                values = set()
            assert values <= allowed, f"{name}{{{m.name}}}: {values - allowed} never occurs"
    return names


# --- the checker itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "rate(mlguard_admission_request_total[5m])",  # typo in the name
        "rate(mlguard_policy_reloads_total_bucket[5m])",  # _bucket of a counter
        'mlguard_admission_requests_total{outcome="rejected"}',  # no such outcome
        'mlguard_policy_violations_total{namespace_name="x"}',  # no such label
        "sum(rate(mlguard_admission_requests_total[5m])",  # does not parse
    ],
)
def test_promql_checker_rejects(expr):
    with pytest.raises(AssertionError):
        check_promql(expr)


# --- ServiceMonitor ------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_port(monitoring, base):
    sm = monitoring.one("ServiceMonitor", "mlguard")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC
    svc = base.one("Service", "mlguard")
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    assert svc["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert len(spec["endpoints"]) == 1
    ep = spec["endpoints"][0]
    assert set(ep) <= ENDPOINT
    assert ep["port"] in ports and ports[ep["port"]]["targetPort"] == "probes"
    assert ep["path"] == "/metrics" and ep.get("scheme", "http") == "http"
    for key in ("interval", "scrapeTimeout"):
        assert DURATION.match(ep[key]), key
    for relabel in ep.get("relabelings", []):
        assert set(relabel) <= RELABEL


def test_service_monitor_keeps_mlguards_endpoint_label(monitoring):
    # mlguard labels its admission series with `endpoint`; the operator's target label of
    # the same name must go, or mlguard's is renamed to exported_endpoint.
    ep = monitoring.one("ServiceMonitor", "mlguard")["spec"]["endpoints"][0]
    dropped = [
        r for r in ep.get("relabelings", []) if r.get("action") == "labeldrop" and r.get("regex") == "endpoint"
    ]
    assert dropped or ep.get("honorLabels") is True


def test_only_the_service_selects_as_job_mlguard(monitoring, base):
    # The alerts select job="mlguard": the Prometheus Operator sets job to the Service name.
    sm = monitoring.one("ServiceMonitor", "mlguard")["spec"]
    assert "jobLabel" not in sm
    assert base.one("Service", "mlguard")


# --- PrometheusRule ------------------------------------------------------------------------


def alerts(monitoring):
    rule = monitoring.one("PrometheusRule", "mlguard")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    out = []
    for group in rule["spec"]["groups"]:
        assert set(group) <= RULE_GROUP
        for r in group["rules"]:
            assert set(r) <= RULE, r.get("alert")
            out.append(r)
    return out


def test_rules_are_well_formed(monitoring):
    rules = alerts(monitoring)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert "record" not in r
        assert isinstance(r["expr"], str)
        if "for" in r:
            assert DURATION.match(r["for"]), r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        ann = r["annotations"]
        for key in ("summary", "description", "runbook"):
            assert ann.get(key, "").strip(), f"{r['alert']}: no {key}"
        for text in ann.values():
            assert text.count("{{") == text.count("}}"), r["alert"]


def test_alert_expressions_use_only_mlguard_metrics(monitoring):
    used = set()
    for r in alerts(monitoring):
        used |= check_promql(r["expr"])
    assert used


def test_the_required_alerts_exist(monitoring):
    exprs = {r["alert"]: r["expr"] for r in alerts(monitoring)}

    def alert_on(pattern):
        return [a for a, e in exprs.items() if re.search(pattern, e)]

    assert alert_on(r'outcome="error"'), "webhook errors"
    assert alert_on(r"histogram_quantile\(0\.99"), "p99 latency"
    assert alert_on(r"mlguard_certificate_expiry_timestamp_seconds"), "certificate expiry"
    assert alert_on(r"mlguard_policy_last_reload_success\s*==\s*0"), "policy reload"
    assert alert_on(r"mlguard_cluster_state_age_seconds\s*>\s*300"), "stale cluster state"
    assert alert_on(r"absent\(up\{"), "mlguard down"


def test_latency_alert_is_tied_to_the_webhook_timeout(monitoring, base):
    timeouts = {
        hook["timeoutSeconds"]
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for hook in base.one(kind, "mlguard")["webhooks"]
    }
    assert len(timeouts) == 1
    timeout = timeouts.pop()
    [expr] = [r["expr"] for r in alerts(monitoring) if "histogram_quantile" in r["expr"]]
    threshold = float(re.search(r">\s*([0-9.]+)\s*$", expr.strip()).group(1))
    assert threshold == pytest.approx(0.8 * timeout)


def test_certificate_alert_fires_within_seven_days(monitoring):
    [expr] = [r["expr"] for r in alerts(monitoring) if "certificate_expiry" in r["expr"]]
    assert re.search(r"<\s*7\s*\*\s*86400", expr)


def test_alerts_select_the_scraped_job(monitoring, base):
    service = base.one("Service", "mlguard")["metadata"]
    for r in alerts(monitoring):
        for sel in selectors(r["expr"]):
            if sel.name == "up":
                labels = {m.name: m.value for m in sel.matchers.matchers}
                assert labels["job"] == service["name"], r["alert"]
                assert labels.get("namespace", service["namespace"]) == service["namespace"]


def test_every_alert_has_a_runbook_section(monitoring):
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in README.read_text().splitlines()
        if line.startswith("#")
    }
    for r in alerts(monitoring):
        anchor = r["alert"].lower()
        assert anchor in headings, f"manifests/README.md has no section {r['alert']}"
        assert f"#{anchor}" in r["annotations"]["runbook"]


# --- Grafana dashboard ---------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def test_dashboard_configmap(monitoring):
    cm = monitoring.one("ConfigMap", "mlguard-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "mlguard-system"
    [(key, content)] = cm["data"].items()
    assert key.endswith(".json")
    assert json.loads(content) == dashboard()


def test_dashboard_structure():
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables
    for p in panels(dash):
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]


def test_dashboard_queries_use_only_mlguard_metrics():
    used = set()
    for p in panels(dashboard()):
        for t in p.get("targets", []):
            used |= check_promql(t["expr"])
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    # The panels the dashboard is for: traffic, latency, decisions by policy.
    assert {
        "mlguard_admission_requests_total",
        "mlguard_admission_request_duration_seconds",
        "mlguard_policy_violations_total",
    } <= bases


def test_dashboard_has_no_namespace_breakdown():
    # mlguard's metrics carry no namespace label (cardinality); a panel that splits by it
    # would show one empty series.
    for p in panels(dashboard()):
        for t in p.get("targets", []):
            assert not re.search(r"by \([^)]*\bnamespace\b", t["expr"]), p["title"]
