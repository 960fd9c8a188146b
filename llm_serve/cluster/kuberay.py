"""KubeRay manifests for an llm-serve config: a RayService, a RayJob for a training recipe, the backing
services (Milvus, PostgreSQL for the ledger), the secret the keys come from, and monitoring.

Worker groups follow the config's engine pools: one GPU group per accelerator type, sized for the largest
replica (tensor x pipeline parallel GPUs) of the pools placed there and for all their replicas at once,
starting from zero, so the Ray autoscaler adds GPU pods only when Serve asks for replicas; one CPU group
for the router, the embedders and CPU pools. Every pod mounts the shared home (models, adapter registry)
at the config's `home`, so an adapter a training job publishes is served without a restart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from llm_serve.cluster.serve_config import LEDGER_URL_ENV, MILVUS_PORT, serve_config
from llm_serve.config import ClusterConfig, Config, PodSize

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "llm-serve-dashboard.json"
METRICS_PORT = 8080  # Ray's metrics export port on every node (rayStartParams metrics-export-port)
PLACEHOLDER = "replace-me"  # secret values a rendered file never carries: `kubectl create secret` sets them
POSTGRES_USER = "llm_serve"
HOME_VOLUME = "llm-serve-home"


def _ray_version(k8s: ClusterConfig) -> str:
    if k8s.ray_version:
        return k8s.ray_version
    import ray

    return ray.__version__


def _meta(k8s: ClusterConfig, name: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": k8s.namespace, "labels": {"app.kubernetes.io/part-of": k8s.name, **labels}}


def _resources(size: PodSize, gpus: int = 0) -> dict[str, Any]:
    quantity: dict[str, Any] = {"cpu": size.cpu, "memory": size.memory}
    if gpus:
        quantity["nvidia.com/gpu"] = gpus
    return {"requests": dict(quantity), "limits": dict(quantity)}


def _container(config: Config, size: PodSize, gpus: int = 0, ports: list[dict[str, Any]] | None = None) -> dict:
    k8s = config.cluster
    container: dict[str, Any] = {
        "name": "ray",
        "image": k8s.image,
        "resources": _resources(size, gpus),
        "envFrom": [{"secretRef": {"name": k8s.secret_name}}],
        "env": [{"name": "LLM_SERVE_HOME", "value": config.home}],
        "volumeMounts": [{"name": HOME_VOLUME, "mountPath": config.home}],
    }
    if ports:
        container["ports"] = ports
    return container


def _pod(config: Config, container: dict[str, Any], node_selector: dict[str, str] | None = None) -> dict:
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": HOME_VOLUME}}],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {"spec": spec}


def gpu_groups(config: Config) -> list[dict[str, Any]]:
    """One GPU worker group per accelerator type of the engine pools (docstring of the module)."""
    by_type: dict[str, list[Any]] = {}
    for model in config.engine_models:
        if model.engine.accelerator == "gpu":
            by_type.setdefault(model.engine.accelerator_type or "any", []).append(model)
    groups = []
    for kind, models in sorted(by_type.items()):
        per_replica = [m.engine.tensor_parallel_size * m.engine.pipeline_parallel_size for m in models]
        gpus = max(per_replica)
        pods = sum(m.autoscaling.max_replicas * math.ceil(n / gpus) for m, n in zip(models, per_replica, strict=True))
        groups.append(
            {
                "groupName": f"gpu-{kind.lower()}",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": max(1, pods),
                "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
                "template": _pod(
                    config,
                    _container(config, config.cluster.gpu_worker, gpus),
                    config.cluster.node_selectors.get(kind),
                ),
            }
        )
    return groups


def ray_cluster_spec(config: Config) -> dict[str, Any]:
    k8s = config.cluster
    head_ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": config.server.port, "name": "serve"},
        {"containerPort": METRICS_PORT, "name": "metrics"},
    ]
    cpu_group = {
        "groupName": "cpu",
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": k8s.cpu_workers_max,
        "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
        "template": _pod(config, _container(config, k8s.cpu_worker)),
    }
    return {
        "rayVersion": _ray_version(k8s),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": k8s.autoscaler_idle_timeout_s},
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "metrics-export-port": str(METRICS_PORT)},
            "template": _pod(config, _container(config, k8s.head, ports=head_ports)),
        },
        "workerGroupSpecs": [cpu_group, *gpu_groups(config)],
    }


def milvus_uri(k8s: ClusterConfig) -> str:
    return f"http://{k8s.name}-milvus.{k8s.namespace}.svc:{MILVUS_PORT}"


def rayservice(raw: dict[str, Any], config: Config) -> dict[str, Any]:
    serve = serve_config(raw, config, milvus_uri=milvus_uri(config.cluster))
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _meta(config.cluster, config.cluster.name),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve, sort_keys=False),
            "rayClusterConfig": ray_cluster_spec(config),
        },
    }


def rayjob(config: Config) -> dict[str, Any]:
    """Training as a RayJob with a cluster of its own (removed when the job ends); the adapter goes to the
    shared home's registry, where the RayService's engine pools pick it up."""
    k8s = config.cluster
    name = f"{k8s.name}-train"
    spec = ray_cluster_spec(config)
    worker = {
        "groupName": "train",
        "replicas": k8s.train_workers,
        "minReplicas": k8s.train_workers,
        "maxReplicas": k8s.train_workers,
        "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
        "template": _pod(
            config, _container(config, k8s.gpu_worker if k8s.train_gpus else k8s.cpu_worker, k8s.train_gpus)
        ),
    }
    spec["enableInTreeAutoscaling"] = False
    spec.pop("autoscalerOptions")
    spec["workerGroupSpecs"] = [worker]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(k8s, name),
        "spec": {
            "entrypoint": f"llm-serve train --config {k8s.train_recipe} --serve-config /etc/llm-serve/config.yaml",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "runtimeEnvYAML": "working_dir: /app\n",
            "rayClusterSpec": _with_config_volume(spec, name),
        },
    }


def _with_config_volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The training job reads the llm-serve config (home, registry) from a ConfigMap on the head."""
    head = spec["headGroupSpec"]["template"]["spec"]
    head["volumes"].append({"name": "llm-serve-config", "configMap": {"name": f"{name}-config"}})
    head["containers"][0]["volumeMounts"].append({"name": "llm-serve-config", "mountPath": "/etc/llm-serve"})
    return spec


def config_map_for_job(raw: dict[str, Any], config: Config) -> dict[str, Any]:
    from llm_serve.cluster.serve_config import cluster_config

    k8s = config.cluster
    body = cluster_config(raw, config, milvus_uri=milvus_uri(k8s))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(k8s, f"{k8s.name}-train-config"),
        "data": {"config.yaml": yaml.safe_dump(body, sort_keys=False)},
    }


def secret(config: Config) -> dict[str, Any]:
    """The names every pod reads from the secret; values are placeholders to set with kubectl."""
    k8s = config.cluster
    names = {key.key_env for key in config.auth.keys if key.key_env}
    names |= {m.provider.api_key_env for m in config.models if m.provider is not None and m.provider.api_key_env}
    data = dict.fromkeys(sorted(names), PLACEHOLDER)
    data["POSTGRES_PASSWORD"] = PLACEHOLDER
    data[LEDGER_URL_ENV] = (
        f"postgresql+psycopg://{POSTGRES_USER}:{PLACEHOLDER}@{k8s.name}-postgres.{k8s.namespace}.svc:5432/llm_serve"
    )
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(k8s, k8s.secret_name), "type": "Opaque",
            "stringData": data}  # fmt: skip


def home_volume(config: Config) -> dict[str, Any]:
    k8s = config.cluster
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": k8s.home_pvc_size}}}
    if k8s.storage_class:
        spec["storageClassName"] = k8s.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(k8s, HOME_VOLUME), "spec": spec}


def _claim(k8s: ClusterConfig, name: str, size: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if k8s.storage_class:
        spec["storageClassName"] = k8s.storage_class
    return {"metadata": {"name": name}, "spec": spec}


def _stateful(k8s: ClusterConfig, name: str, pod: dict[str, Any], claim: dict[str, Any], port: int) -> list[dict]:
    labels = {"app.kubernetes.io/name": name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(k8s, name, **labels),
        "spec": {"selector": labels, "ports": [{"name": "main", "port": port, "targetPort": port}]},
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(k8s, name, **labels),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
            "volumeClaimTemplates": [claim],
        },
    }
    return [service, statefulset]


# Milvus standalone with its embedded etcd and local storage, as milvus' own standalone_embed.sh runs it.
EMBED_ETCD = {
    "listen-client-urls": "http://0.0.0.0:2379",
    "advertise-client-urls": "http://0.0.0.0:2379",
    "quota-backend-bytes": 4294967296,
    "auto-compaction-mode": "revision",
    "auto-compaction-retention": "1000",
}


def milvus(config: Config) -> list[dict[str, Any]]:
    k8s = config.cluster
    name = f"{k8s.name}-milvus"
    settings = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(k8s, f"{name}-etcd"),
        "data": {"embedEtcd.yaml": yaml.safe_dump(EMBED_ETCD, sort_keys=False)},
    }
    env = {"ETCD_USE_EMBED": "true", "ETCD_DATA_DIR": "/var/lib/milvus/etcd", "COMMON_STORAGETYPE": "local",
           "ETCD_CONFIG_PATH": "/milvus/configs/embedEtcd.yaml"}  # fmt: skip
    probe = {"httpGet": {"path": "/healthz", "port": 9091}, "initialDelaySeconds": 30, "periodSeconds": 10}
    pod = {
        "containers": [
            {
                "name": "milvus",
                "image": k8s.milvus_image,
                "args": ["milvus", "run", "standalone"],
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "ports": [{"containerPort": MILVUS_PORT, "name": "grpc"}, {"containerPort": 9091, "name": "health"}],
                "readinessProbe": probe,
                "livenessProbe": probe,
                "resources": _resources(PodSize(cpu="2", memory="8Gi")),
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/milvus"},
                    {"name": "etcd-config", "mountPath": "/milvus/configs/embedEtcd.yaml", "subPath": "embedEtcd.yaml"},
                ],
            }
        ],
        "volumes": [{"name": "etcd-config", "configMap": {"name": f"{name}-etcd"}}],
    }
    return [settings, *_stateful(k8s, name, pod, _claim(k8s, "data", "50Gi"), MILVUS_PORT)]


def postgres(config: Config) -> list[dict[str, Any]]:
    k8s = config.cluster
    name = f"{k8s.name}-postgres"
    password = {"secretKeyRef": {"name": k8s.secret_name, "key": "POSTGRES_PASSWORD"}}
    pod = {
        "containers": [
            {
                "name": "postgres",
                "image": k8s.postgres_image,
                "env": [
                    {"name": "POSTGRES_USER", "value": POSTGRES_USER},
                    {"name": "POSTGRES_DB", "value": "llm_serve"},
                    {"name": "POSTGRES_PASSWORD", "valueFrom": password},
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                ],
                "ports": [{"containerPort": 5432, "name": "postgres"}],
                "readinessProbe": {"exec": {"command": ["pg_isready", "-U", POSTGRES_USER]}, "periodSeconds": 10},
                "resources": _resources(PodSize(cpu="2", memory="4Gi")),
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            }
        ]
    }
    return _stateful(k8s, name, pod, _claim(k8s, "data", "20Gi"), 5432)


def monitoring(config: Config) -> list[dict[str, Any]]:
    """Ray's metrics port on every node behind one headless Service, a ServiceMonitor for the Prometheus
    operator, and the Grafana dashboard as a ConfigMap its sidecar loads (label grafana_dashboard)."""
    k8s = config.cluster
    labels = {"app.kubernetes.io/name": f"{k8s.name}-metrics"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(k8s, f"{k8s.name}-metrics", **labels),
        "spec": {
            "clusterIP": "None",
            "selector": {"ray.io/is-ray-node": "yes"},
            "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT}],
        },
    }
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(k8s, k8s.name),
        "spec": {
            "selector": {"matchLabels": labels},
            "namespaceSelector": {"matchNames": [k8s.namespace]},
            "endpoints": [{"port": "metrics", "interval": "15s", "path": "/metrics"}],
        },
    }
    dashboard = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(k8s, f"{k8s.name}-grafana-dashboard", grafana_dashboard="1"),
        "data": {"llm-serve-dashboard.json": json.dumps(json.loads(DASHBOARD.read_text()), indent=1)},
    }
    return [service, monitor, dashboard]


def manifests(raw: dict[str, Any], config: Config) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects it holds (what `llm-serve cluster render` writes)."""
    return {
        "secrets.yaml": [secret(config)],
        "storage.yaml": [home_volume(config)],
        "backing-services.yaml": [*milvus(config), *postgres(config)],
        "rayservice.yaml": [rayservice(raw, config)],
        "rayjob-train.yaml": [config_map_for_job(raw, config), rayjob(config)],
        "monitoring.yaml": monitoring(config),
    }
