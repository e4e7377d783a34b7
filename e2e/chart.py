#!/usr/bin/env python3
"""Checks the Helm chart with real Helm (helm-python-sdk: Helm's Go SDK in a wheel).

- `helm lint --strict` and `helm template` for the default values and every
  charts/logstream/ci/*.yaml;
- every rendered manifest against the Kubernetes OpenAPI schemas of two minor versions
  (kubernetes-validate, strict); the sample LogStream against the CRD's schema; kinds
  of other projects' CRDs (Prometheus Operator, Gateway API) are named and skipped;
- pod security: non-root (the collector excepted: uid 0 with no capabilities, see
  values.yaml), read-only root filesystem, all capabilities dropped, seccomp
  RuntimeDefault;
- the chart's CRD is the checked-in one;
- each charts/logstream/ci/bad/*.yaml is refused, naming what its first line says;
- the platform alerts: every value set is rendered again with the PrometheusRule API
  (`--api-versions monitoring.coreos.com/v1/PrometheusRule`): the PrometheusRule is
  there (unless `prometheusRule.enabled: false`) with `spec.groups` equal to
  rules/platform-alerts.yaml (runbook links moved to `prometheusRule.runbookBaseUrl`)
  and `prometheusRule.labels` on it, and it is absent without the API.
"""

import copy
import glob
import json
import os
import sys

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts/logstream")
VERSIONS = ["1.33.0", "1.37.0"]
FOREIGN = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor"),
           ("monitoring.coreos.com/v1", "PrometheusRule"), ("gateway.networking.k8s.io/v1", "HTTPRoute")}
# The API a cluster with the Prometheus Operator's CRDs serves (what `helm install`
# finds there, and `helm template --api-versions` names).
PROMETHEUS_RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
RULES = os.path.join(CHART, "rules/platform-alerts.yaml")
RUNBOOKS = "https://github.com/logstream/logstream/blob/main/docs/runbooks/"
failures = []


def load_values(path):
    if path is None:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def render(chart, values, api_versions=()):
    """`helm template` of `chart`; `api_versions` are added to the capabilities (Helm's
    `--api-versions`). helm-python-sdk's `Chart.render` has no keyword for them, so the
    call goes to libhelm_c's render, whose options take `api_versions`, directly."""
    opts = {"name": "ls", "namespace": "logstream-system", "is_install": True}
    if not api_versions:
        return chart.render(values, **opts)
    opts["api_versions"] = list(api_versions)
    return json.loads(helm_python._native.call_string(
        "helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))


def expected_rule_groups(values):
    """rules/platform-alerts.yaml as the PrometheusRule must carry it for `values`."""
    with open(RULES) as f:
        groups = copy.deepcopy(yaml.safe_load(f)["groups"])
    with open(os.path.join(CHART, "values.yaml")) as f:
        base = yaml.safe_load(f)["prometheusRule"]["runbookBaseUrl"]
    base = values.get("prometheusRule", {}).get("runbookBaseUrl", base).rstrip("/") + "/"
    for g in groups:
        for r in g["rules"]:
            url = r.get("annotations", {}).get("runbook_url")
            if url is not None:
                r["annotations"]["runbook_url"] = url.replace(RUNBOOKS, base)
    return groups


def check_prometheus_rule(where, values, with_api, docs):
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    wanted = with_api and values.get("prometheusRule", {}).get("enabled", True)
    if not wanted:
        if rules:
            failures.append(f"{where}: a PrometheusRule rendered "
                            f"{'while prometheusRule.enabled is false' if with_api else 'without the PrometheusRule API'}")
        return 0
    if len(rules) != 1:
        failures.append(f"{where}: {len(rules)} PrometheusRules rendered with the API, expected 1")
        return 0
    rule = rules[0]
    if rule["apiVersion"] != "monitoring.coreos.com/v1":
        failures.append(f"{where}: PrometheusRule apiVersion {rule['apiVersion']}")
    if rule["metadata"].get("namespace") != "logstream-system":
        failures.append(f"{where}: PrometheusRule not in the release namespace")
    for k, v in values.get("prometheusRule", {}).get("labels", {}).items():
        if rule["metadata"].get("labels", {}).get(k) != v:
            failures.append(f"{where}: PrometheusRule lacks the label {k}={v} of prometheusRule.labels")
    if rule["spec"].get("groups") != expected_rule_groups(values):
        failures.append(f"{where}: PrometheusRule spec.groups differ from charts/logstream/rules/platform-alerts.yaml")
    if set(rule["spec"]) != {"groups"}:
        failures.append(f"{where}: PrometheusRule spec has more than groups: {sorted(rule['spec'])}")
    return 1


def crd_schema():
    with open(os.path.join(ROOT, "crds/logstream.dev_logstreams.yaml")) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft202012Validator({"type": "object", "properties": {"spec": schema["properties"]["spec"]}})


def check_security(doc, where):
    kind = doc["kind"]
    if kind not in ("Deployment", "DaemonSet", "StatefulSet"):
        return
    pod = doc["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        failures.append(f"{where}: {kind}/{doc['metadata']['name']}: no seccomp RuntimeDefault")
    collector = doc["metadata"]["labels"].get("app.kubernetes.io/name") == "logstream-collector"
    if not collector and psc.get("runAsNonRoot") is not True:
        failures.append(f"{where}: {kind}/{doc['metadata']['name']}: not runAsNonRoot")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False \
                or sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            failures.append(f"{where}: {kind}/{doc['metadata']['name']}/{c['name']}: security context too open: {sc}")
        if "resources" not in c or "limits" not in c["resources"]:
            failures.append(f"{where}: {c['name']}: no resource limits")


def main():
    checked = rules_checked = 0
    value_sets = [None] + sorted(glob.glob(os.path.join(CHART, "ci/*.yaml")))
    # The PrometheusRule's own values, besides the ci files (which keep its defaults).
    extra = [
        ("prometheusRule with labels and a runbook mirror",
         {"prometheusRule": {"labels": {"release": "kube-prometheus-stack"},
                             "runbookBaseUrl": "https://runbooks.example.com/logstream/"}}),
        ("prometheusRule disabled", {"prometheusRule": {"enabled": False}}),
    ]
    ls_schema = crd_schema()
    runs = [(os.path.basename(p) if p else "default values", load_values(p)) for p in value_sets] + extra
    for where, values in runs:
        try:
            result = helm_python.lint(CHART, values, strict=True, namespace="logstream-system")
        except helm_python.HelmError as e:
            failures.append(f"{where}: helm lint failed: {e}")
            continue
        # Helm's severities: 1 info, 2 warning, 3 error; --strict fails on warnings too.
        msgs = [m for m in result.get("messages", []) if m.get("severity", 0) >= 2] + result.get("errors", [])
        if msgs:
            failures.append(f"{where}: helm lint --strict: {msgs}")
        chart = helm_python.Chart.load(CHART)
        for with_api in (False, True):
            at = f"{where} (with {PROMETHEUS_RULE_API})" if with_api else where
            try:
                rendered = render(chart, values, [PROMETHEUS_RULE_API] if with_api else ())
            except helm_python.HelmError as e:
                failures.append(f"{at}: helm template failed: {e}")
                continue
            kinds, docs = [], []
            for fname, text in sorted(rendered.items()):
                if fname.endswith("NOTES.txt"):
                    if "kubectl logstream logs -f" not in text:
                        failures.append(f"{at}: NOTES.txt lacks the follow command")
                    continue
                for doc in yaml.safe_load_all(text):
                    if not doc:
                        continue
                    kinds.append(doc["kind"])
                    docs.append(doc)
                    key = (doc["apiVersion"], doc["kind"])
                    # Other projects' kinds (the PrometheusRule included): kubernetes-validate
                    # knows only Kubernetes' own schemas.
                    if key in FOREIGN:
                        continue
                    if doc["kind"] == "LogStream":
                        for e in ls_schema.iter_errors(doc):
                            failures.append(f"{at}: LogStream: {e.message} at {list(e.path)}")
                        continue
                    for v in VERSIONS:
                        try:
                            kubernetes_validate.validate(doc, v, strict=True)
                        except kubernetes_validate.ValidationError as e:
                            failures.append(f"{at}: {doc['kind']}/{doc['metadata'].get('name')} on {v}: {e.message} at {list(e.path)}")
                    check_security(doc, at)
                    checked += 1
            if "Deployment" not in kinds:
                failures.append(f"{at}: no operator Deployment rendered")
            rules_checked += check_prometheus_rule(at, values, with_api, docs)
        chart.close()

    with open(os.path.join(CHART, "crds/logstream.dev_logstreams.yaml")) as a, \
            open(os.path.join(ROOT, "crds/logstream.dev_logstreams.yaml")) as b:
        if a.read() != b.read():
            failures.append("charts/logstream/crds/logstream.dev_logstreams.yaml differs from crds/: "
                            "cp crds/logstream.dev_logstreams.yaml charts/logstream/crds/")

    refused = 0
    # A runbook base that is not a URL (the links would lead nowhere).
    try:
        chart = helm_python.Chart.load(CHART)
        render(chart, {"prometheusRule": {"runbookBaseUrl": "docs/runbooks"}}, [PROMETHEUS_RULE_API])
        failures.append("prometheusRule.runbookBaseUrl docs/runbooks: rendered, but the values schema must refuse it")
    except helm_python.HelmError as e:
        if "runbookBaseUrl" not in str(e):
            failures.append(f"prometheusRule.runbookBaseUrl docs/runbooks: refused without naming it: {e}")
        refused += 1
    for bad in sorted(glob.glob(os.path.join(CHART, "ci/bad/*.yaml"))):
        with open(bad) as f:
            first = f.readline().strip()
        want = first.removeprefix("# refused: ")
        try:
            chart = helm_python.Chart.load(CHART)
            chart.render(load_values(bad), name="ls", namespace="logstream-system", is_install=True)
            failures.append(f"{os.path.basename(bad)}: rendered, but the values schema must refuse it")
        except helm_python.HelmError as e:
            if want not in str(e):
                failures.append(f"{os.path.basename(bad)}: refused, but the message does not name {want!r}: {e}")
            refused += 1

    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"chart.py: helm lint --strict and template clean for {len(value_sets) + len(extra)} value sets, "
          f"each with and without {PROMETHEUS_RULE_API}; "
          f"{checked} manifests valid on Kubernetes {', '.join(VERSIONS)} (strict) with locked-down pods; "
          f"PrometheusRule = rules/platform-alerts.yaml in {rules_checked} renders with the API, absent without it; "
          f"CRD in sync; {refused} bad values refused")


if __name__ == "__main__":
    main()
