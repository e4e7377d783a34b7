#!/usr/bin/env python3
"""Prints the chart rendered with real Helm (helm-python-sdk) as one YAML stream.

Usage: render.py NAMESPACE [KEY=JSON ...]   (KEY is a dotted values path)
"""
import json
import os
import sys

import helm_python

chart = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../charts/logstream")
namespace = sys.argv[1]
values = {}
for arg in sys.argv[2:]:
    key, raw = arg.split("=", 1)
    node = values
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = json.loads(raw)
rendered = helm_python.Chart.load(chart).render(values, name="logstream", namespace=namespace, is_install=True)
for name, text in sorted(rendered.items()):
    if name.endswith(".yaml") and text.strip():
        print(f"---\n# {name}\n{text}")
