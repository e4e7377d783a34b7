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
- each charts/logstream/ci/bad/*.yaml is refused, naming what its first line says.
"""

import glob
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
           ("gateway.networking.k8s.io/v1", "HTTPRoute")}
failures = []


def load_values(path):
    if path is None:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


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
    checked = 0
    value_sets = [None] + sorted(glob.glob(os.path.join(CHART, "ci/*.yaml")))
    ls_schema = crd_schema()
    for path in value_sets:
        where = os.path.basename(path) if path else "default values"
        values = load_values(path)
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
        try:
            rendered = chart.render(values, name="ls", namespace="logstream-system", is_install=True)
        except helm_python.HelmError as e:
            failures.append(f"{where}: helm template failed: {e}")
            continue
        kinds = []
        for fname, text in sorted(rendered.items()):
            if fname.endswith("NOTES.txt"):
                if "kubectl logstream logs -f" not in text:
                    failures.append(f"{where}: NOTES.txt lacks the follow command")
                continue
            for doc in yaml.safe_load_all(text):
                if not doc:
                    continue
                kinds.append(doc["kind"])
                key = (doc["apiVersion"], doc["kind"])
                if key in FOREIGN:
                    continue
                if doc["kind"] == "LogStream":
                    for e in ls_schema.iter_errors(doc):
                        failures.append(f"{where}: LogStream: {e.message} at {list(e.path)}")
                    continue
                for v in VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, v, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        failures.append(f"{where}: {doc['kind']}/{doc['metadata'].get('name')} on {v}: {e.message} at {list(e.path)}")
                check_security(doc, where)
                checked += 1
        if "Deployment" not in kinds:
            failures.append(f"{where}: no operator Deployment rendered")
        chart.close()

    with open(os.path.join(CHART, "crds/logstream.dev_logstreams.yaml")) as a, \
            open(os.path.join(ROOT, "crds/logstream.dev_logstreams.yaml")) as b:
        if a.read() != b.read():
            failures.append("charts/logstream/crds/logstream.dev_logstreams.yaml differs from crds/: "
                            "cp crds/logstream.dev_logstreams.yaml charts/logstream/crds/")

    refused = 0
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
    print(f"chart.py: helm lint --strict and template clean for {len(value_sets)} value sets; "
          f"{checked} manifests valid on Kubernetes {', '.join(VERSIONS)} (strict) with locked-down pods; "
          f"CRD in sync; {refused} bad values files refused")


if __name__ == "__main__":
    main()
