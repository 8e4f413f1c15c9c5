"""A tiny kustomize: exactly the subset k8s/ uses, and an error for anything else.

    from tests.deploy.kustomize import render
    manifests = render(Path("k8s/overlays/prod"))

Supported in a kustomization.yaml: `resources` (files and directories), `namespace`, and
`patches` holding strategic-merge patches (`path`, optional `target` with `kind`, `name` and an
equality `labelSelector`). Strategic merge here: maps merge recursively, lists of maps that all
carry `name` (containers, env, volumes) merge by name, any other list or value is replaced. Every
other kustomization field, patch directive (`$patch`) or selector form raises
UnsupportedKustomization, so a test can never pass on a rendering kustomize would not produce;
test_k8s.py also compares the result with `kubectl kustomize` where kubectl is installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches"}
PATCH_KEYS = {"path", "target"}
TARGET_KEYS = {"kind", "name", "labelSelector"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}


class UnsupportedKustomization(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[Manifest]:
    """The manifests `kustomize build directory` would print (in file order)."""
    kustomization = _load_one(directory / "kustomization.yaml")
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: unsupported fields {sorted(unknown)}")
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise UnsupportedKustomization(f"{directory}: kind {kustomization['kind']!r}")
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        manifests.extend(render(path) if path.is_dir() else _load_all(path))
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, manifests)
    namespace = kustomization.get("namespace")
    if namespace:
        for manifest in manifests:
            if manifest["kind"] not in CLUSTER_SCOPED_KINDS:
                manifest["metadata"]["namespace"] = namespace
    _check_unique(directory, manifests)
    return manifests


def strategic_merge(base: Any, patch: Any) -> Any:
    """`patch` merged onto `base` (neither is modified)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if str(key).startswith("$"):
                raise UnsupportedKustomization(f"patch directive {key!r}")
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if _named_items(base) and _named_items(patch):
        merged_list = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                position = index[item["name"]]
                merged_list[position] = strategic_merge(merged_list[position], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """True when every `selector` pair is among `labels` (an equality selector)."""
    return all(labels.get(key) == value for key, value in selector.items())


def parse_label_selector(text: str) -> dict[str, str]:
    """`a=b,c==d` -> {"a": "b", "c": "d"}; set-based forms raise."""
    pairs: dict[str, str] = {}
    for term in (part.strip() for part in text.split(",")):
        match = re.fullmatch(r"([\w./-]+)\s*==?\s*([\w.-]*)", term)
        if match is None:
            raise UnsupportedKustomization(f"label selector term {term!r}")
        pairs[match[1]] = match[2]
    return pairs


def _apply_patch(directory: Path, entry: dict[str, Any], manifests: list[Manifest]) -> None:
    unknown = set(entry) - PATCH_KEYS
    if unknown or "path" not in entry:
        raise UnsupportedKustomization(f"{directory}: patch fields {sorted(entry)}")
    patch = _load_one(directory / entry["path"])
    target = entry.get("target")
    if target is None:
        target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    elif set(target) - TARGET_KEYS:
        raise UnsupportedKustomization(f"{directory}: target fields {sorted(target)}")
    body = {key: value for key, value in patch.items() if key not in ("apiVersion", "kind")}
    body["metadata"] = {k: v for k, v in patch.get("metadata", {}).items() if k != "name"}
    if not body["metadata"]:
        del body["metadata"]
    selector = parse_label_selector(target["labelSelector"]) if "labelSelector" in target else {}
    hits = [
        i
        for i, manifest in enumerate(manifests)
        if manifest["kind"] == target.get("kind", manifest["kind"])
        and re.fullmatch(target.get("name", ".*"), manifest["metadata"]["name"])
        and labels_match(selector, manifest["metadata"].get("labels", {}))
    ]
    if not hits:
        raise UnsupportedKustomization(f"{directory}: patch {entry['path']} matches nothing")
    for i in hits:
        manifests[i] = strategic_merge(manifests[i], body)


def _named_items(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "name" in item for item in value)
    )


def _check_unique(directory: Path, manifests: list[Manifest]) -> None:
    seen: set[tuple[str, str]] = set()
    for manifest in manifests:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if key in seen:
            raise UnsupportedKustomization(f"{directory}: {key} defined twice")
        seen.add(key)


def _load_all(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _load_one(path: Path) -> Manifest:
    docs = _load_all(path)
    if len(docs) != 1:
        raise UnsupportedKustomization(f"{path}: expected one document, found {len(docs)}")
    return docs[0]
