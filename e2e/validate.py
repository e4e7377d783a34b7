#!/usr/bin/env python3
"""Validates what the operator builds against the real Kubernetes schemas.

1. Every object `logstream-operator render` produces for each sample LogStream in
   e2e/samples/, and the CRD itself, against the Kubernetes OpenAPI schemas of two
   minor versions (kubernetes-validate, strict: unknown fields are errors); so are
   the plain Kubernetes examples in e2e/examples/ (the collector as a sidecar).
2. The samples against the CRD's own openAPIV3Schema (as JSON Schema, unknown fields
   refused as `kubectl apply` does by default), and the bad samples marked
   `# refused: schema: <field>` must be refused naming that field. (CEL rules are
   evaluated in Rust: crds/tests/crd.rs.)
3. A control: a deliberately broken object must fail, so a validator that passes
   everything cannot go unnoticed.

Usage: validate.py OPERATOR_BINARY
"""

import copy
import glob
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

VERSIONS = ["1.33.0", "1.37.0"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def k8s_validate(obj, where):
    for v in VERSIONS:
        try:
            kubernetes_validate.validate(obj, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{where}: {obj['kind']}/{obj['metadata'].get('name')} on {v}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{where}: no schema for {obj['kind']} on {v}: {e}")


def to_json_schema(s):
    """OpenAPI v3 structural schema -> JSON Schema (draft 2020-12)."""
    s = copy.deepcopy(s)
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in s:
        s["properties"] = {k: to_json_schema(v) for k, v in s["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields"):
            s.setdefault("additionalProperties", False)
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = to_json_schema(s["additionalProperties"])
    if "items" in s:
        s["items"] = to_json_schema(s["items"])
    for key in ("oneOf", "allOf"):
        if key in s:
            s[key] = [to_json_schema(x) for x in s[key]]
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    for k in [k for k in s if k.startswith("x-kubernetes-")]:
        del s[k]
    return s


def main():
    operator = sys.argv[1]
    samples = sorted(glob.glob(os.path.join(ROOT, "e2e/samples/*.yaml")))
    assert len(samples) >= 3, "sample LogStreams"
    checked = 0
    for sample in samples:
        out = subprocess.run([operator, "render", "-f", sample], capture_output=True, text=True)
        if out.returncode != 0:
            failures.append(f"{sample}: render failed: {out.stderr.strip()}")
            continue
        for obj in yaml.safe_load_all(out.stdout):
            if obj:
                k8s_validate(obj, os.path.basename(sample))
                checked += 1

    # Plain Kubernetes examples (e.g. the collector as a sidecar).
    examples = sorted(glob.glob(os.path.join(ROOT, "e2e/examples/*.yaml")))
    for example in examples:
        with open(example) as f:
            for obj in yaml.safe_load_all(f):
                if obj:
                    k8s_validate(obj, os.path.basename(example))
                    checked += 1

    crd_text = subprocess.run([operator, "crds"], capture_output=True, text=True, check=True).stdout
    with open(os.path.join(ROOT, "crds/logstream.dev_logstreams.yaml")) as f:
        if f.read() != crd_text:
            failures.append("crds/logstream.dev_logstreams.yaml differs from `logstream-operator crds`")
    crd = next(d for d in yaml.safe_load_all(crd_text) if d)
    k8s_validate(crd, "CRD")

    root = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    # The API server adds these to every custom resource.
    root["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                               "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}})
    schema = to_json_schema(root)
    validator = jsonschema.Draft202012Validator(schema)
    for sample in samples:
        with open(sample) as f:
            doc = yaml.safe_load(f)
        for e in validator.iter_errors(doc):
            failures.append(f"{os.path.basename(sample)}: refused by the CRD schema: {e.message} at {list(e.path)}")
    refused = 0
    for bad in sorted(glob.glob(os.path.join(ROOT, "e2e/samples/bad/*.yaml"))):
        with open(bad) as f:
            first = f.readline().strip()
            f.seek(0)
            doc = yaml.safe_load(f)
        if not first.startswith("# refused: schema: "):
            continue
        field = first.removeprefix("# refused: schema: ")
        errors = list(validator.iter_errors(doc))
        parent, leaf = field.rsplit(".", 1)
        paths = [(".".join(str(p) for p in e.absolute_path), e.message) for e in errors]
        if not any(p == field or (p == parent and repr(leaf) in m) for p, m in paths):
            failures.append(f"{os.path.basename(bad)}: the CRD schema must refuse {field}; got {paths}")
        refused += 1

    # Controls: the validators must be able to fail.
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
              "spec": {"replicas": "two", "selector": {}, "template": {}, "bogus": 1}}
    try:
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
        failures.append("control: kubernetes-validate accepted a broken Deployment")
    except kubernetes_validate.ValidationError:
        pass
    if validator.is_valid({"apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream", "metadata": {}, "spec": {"tenant": "x", "nope": 1}}):
        failures.append("control: the CRD schema accepted an unknown field")

    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"validate.py: {checked} rendered objects and the CRD valid on Kubernetes {', '.join(VERSIONS)} (strict); "
          f"{len(samples)} samples fit the CRD schema; {refused} bad samples refused by it")


if __name__ == "__main__":
    main()
