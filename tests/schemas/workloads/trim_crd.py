#!/usr/bin/env python3
"""Trim a CustomResourceDefinition to what the schema tests read, as one line of JSON.

    trim_crd.py [--version NAME ...] < upstream-crd.yaml > KIND.json

Keeps apiVersion, kind, metadata.name and, of spec, group, names, scope and the chosen
versions (all of them without --version) with name, served, storage and
schema.openAPIV3Schema, unchanged (descriptions included). It drops what the API server does
not validate with: subresources, printer columns, conversion, annotations. The upstream
files are 0.6 to 1.4 MB of YAML each; the trimmed JSON is a half to a sixth of that.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml


def trim(crd: dict, versions: list[str] | None) -> dict:
    if crd.get("kind") != "CustomResourceDefinition":
        raise SystemExit(f"not a CustomResourceDefinition: {crd.get('kind')}")
    spec = crd["spec"]
    kept = [v for v in spec["versions"] if not versions or v["name"] in versions]
    missing = set(versions or []) - {v["name"] for v in kept}
    if missing:
        raise SystemExit(f"{crd['metadata']['name']} has no version {sorted(missing)}")
    return {
        "apiVersion": crd["apiVersion"],
        "kind": crd["kind"],
        "metadata": {"name": crd["metadata"]["name"]},
        "spec": {
            "group": spec["group"],
            "names": spec["names"],
            "scope": spec["scope"],
            "versions": [
                {
                    "name": v["name"],
                    "served": v["served"],
                    "storage": v["storage"],
                    "schema": {"openAPIV3Schema": v["schema"]["openAPIV3Schema"]},
                }
                for v in kept
            ],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="append", help="keep only this version (repeatable)")
    args = parser.parse_args()
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    if len(docs) != 1:
        raise SystemExit(f"expected one CRD, got {len(docs)} documents")
    json.dump(trim(docs[0], args.version), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
