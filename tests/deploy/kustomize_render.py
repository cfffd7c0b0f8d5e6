"""A small kustomize renderer for this repository's manifests, so the tests need no `kustomize`
binary: `resources` (files and folders with their own kustomization), `patches` (strategic-merge
patch files), `images`, `namespace` and `labels`. It is checked against `kubectl kustomize` where
that is installed (tests/deploy/test_kubernetes.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CLUSTER_SCOPED_KINDS", "render"]

CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"})
_SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images", "namespace", "labels"}
#: Lists merged item by item on this key (the strategic-merge keys of the fields used here).
_MERGE_KEYS = ("name", "containerPort", "mountPath")


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = next((k for k in _MERGE_KEYS if base and all(isinstance(i, dict) and k in i for i in base + patch)), None)
        if key is None:
            return copy.deepcopy(patch)
        # As kustomize orders them: the patch's items (merged into the base's), then the rest.
        by_key = {item[key]: item for item in base}
        out = [_merge(by_key[item[key]], item) if item[key] in by_key else copy.deepcopy(item) for item in patch]
        patched = {item[key] for item in patch}
        return out + [copy.deepcopy(item) for item in base if item[key] not in patched]
    return copy.deepcopy(patch)


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    pod = (spec.get("jobTemplate", {}).get("spec", spec).get("template") or {}).get("spec") or {}
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def _set_image(container: dict[str, Any], rule: dict[str, Any]) -> None:
    image = container.get("image", "")
    name, tag = (image.rsplit(":", 1) + [""])[:2] if ":" in image.rsplit("/", 1)[-1] else (image, "")
    if name != rule["name"]:
        return
    name = rule.get("newName", name)
    tag = rule.get("newTag", tag)
    container["image"] = f"{name}:{tag}" if tag else name


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build folder` would output (order aside)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _SUPPORTED
    if unknown:
        raise ValueError(f"{folder}: this renderer does not support {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch_entry in kustomization.get("patches", []):
        if "path" not in patch_entry or "target" in patch_entry:
            raise ValueError(f"{folder}: only strategic-merge patch files are supported")
        patch = yaml.safe_load((folder / patch_entry["path"]).read_text())
        targets = [
            o for o in objects if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]
        ]
        if len(targets) != 1:
            raise ValueError(f"{folder}/{patch_entry['path']}: matches {len(targets)} objects")
        objects[objects.index(targets[0])] = _merge(targets[0], patch)
    for rule in kustomization.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                _set_image(container, rule)
    namespace = kustomization.get("namespace")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj["kind"] not in CLUSTER_SCOPED_KINDS:
            meta["namespace"] = namespace
        for label_set in kustomization.get("labels", []):
            if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
                raise ValueError(f"{folder}: labels with includeSelectors/includeTemplates are not supported")
            meta["labels"] = {**meta.get("labels", {}), **label_set["pairs"]}
    return objects
