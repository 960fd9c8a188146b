"""Validate rendered manifests offline: KubeRay and Prometheus-operator objects against their CRDs' OpenAPI
schemas (kept in cluster/kuberay/schemas/), built-in kinds against the Kubernetes schemas that the
`kubernetes-validate` package ships, a RayService's serveConfigV2 against Ray Serve's own ServeDeploySchema
and the llm-serve config inside it against llm-serve's, and a cluster launcher file against Ray's
ray-schema.json. No cluster and no network are needed, so CI runs it.

The CRD schemas are made strict here: Kubernetes silently drops fields a structural schema does not
declare, so a misspelt field would pass `kubectl apply` and do nothing; every object schema that lists its
properties (and does not say x-kubernetes-preserve-unknown-fields) gets additionalProperties: false.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "cluster" / "kuberay" / "schemas"
CRDS = {
    ("ray.io/v1", "RayService"): "ray.io_rayservices.v1.json.gz",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.v1.json.gz",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.v1.json.gz",
}
KUBERNETES_VERSION = "1.33.0"


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_validator(api_version: str, kind: str) -> Any:
    import jsonschema

    with gzip.open(SCHEMAS / CRDS[(api_version, kind)]) as f:
        schema = json.load(f)
    schema = _strict({k: v for k, v in schema.items() if not k.startswith("x-")})
    # metadata is the ObjectMeta of the built-in schemas; the CRD declares only `type: object`.
    return jsonschema.Draft7Validator(schema)


def _where(error: Any) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Problems with one object, each naming the field; [] when it is valid."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "?")
    label = f"{kind}/{name}"
    if (api_version, kind) in CRDS:
        problems = [f"{label}: {_where(e)}: {e.message}" for e in crd_validator(api_version, kind).iter_errors(obj)]
        if kind == "RayService" and not problems:
            problems += [
                f"{label}: spec.serveConfigV2: {p}" for p in validate_serve_config(obj["spec"]["serveConfigV2"])
            ]
        return problems
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{label}: {'/'.join(str(p) for p in exc.path) or '(root)'}: {exc.message}"]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        return [f"{label}: no schema for {api_version} {kind} ({exc})"]
    return []


def validate_serve_config(text: str | dict[str, Any]) -> list[str]:
    """The Serve config against ServeDeploySchema; an llm-serve application's config_dict against Config."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from llm_serve.cluster.serve_config import IMPORT_PATH
    from llm_serve.config import ConfigError, parse_config

    data = yaml.safe_load(text) if isinstance(text, str) else text
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    problems = []
    for app in data.get("applications", []):
        if app.get("import_path") == IMPORT_PATH:
            try:
                parse_config((app.get("args") or {}).get("config_dict") or {}, origin="config_dict")
            except ConfigError as exc:
                problems.append(f"application {app.get('name')}: {exc}")
    return problems


def validate_launcher(data: dict[str, Any]) -> list[str]:
    """A Ray cluster launcher file against the ray-schema.json of the installed Ray (what `ray up` checks
    after filling in the provider's defaults; the schema alone, so no cloud SDK is imported)."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{_where(e)}: {e.message}" for e in validator.iter_errors(data)]


def validate_file(path: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if not docs:
        return [f"{path.name}: no objects"]
    if path.name == "ray-cluster.yaml":
        return [f"{path.name}: {p}" for p in validate_launcher(docs[0])]
    if path.name == "serve-config.yaml":
        return [f"{path.name}: {p}" for p in validate_serve_config(docs[0])]
    return [f"{path.name}: {p}" for doc in docs for p in validate_object(doc)]
