"""The Ray cluster launcher file for VMs (`ray up cluster/ray-cluster.yaml`), from the same llm-serve config
and with the same node groups as the RayService, plus the Serve config file it deploys
(`serve deploy cluster/serve-config.yaml`, run on the head once `ray up` is done).

The provider is AWS, the launcher's most used one; the node types carry their instance type per accelerator
(`cluster.launcher`), and another provider needs only its `provider` and `node_config` blocks changed.
"""

from __future__ import annotations

import math
from typing import Any

from llm_serve.cluster.kuberay import gpu_groups
from llm_serve.config import Config

SERVE_CONFIG_PATH = "~/llm-serve/serve-config.yaml"


def ray_cluster(config: Config) -> dict[str, Any]:
    launcher = config.cluster.launcher
    cpu_per_worker = int(float(config.cluster.cpu_worker.cpu))
    node_types: dict[str, Any] = {
        "head": {
            "resources": {},
            "node_config": {"InstanceType": launcher.head_instance_type},
            "min_workers": 0,
            "max_workers": 0,
        },
        "cpu": {
            "resources": {"CPU": cpu_per_worker},
            "node_config": {"InstanceType": launcher.cpu_instance_type},
            "min_workers": 1,
            "max_workers": config.cluster.cpu_workers_max,
        },
    }
    for group in gpu_groups(config):
        kind = group["groupName"].removeprefix("gpu-").upper()
        per_replica = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        vm = launcher.gpu_instance_types.get(kind) or launcher.gpu_instance_types["any"]
        if vm.gpus < per_replica:
            raise ValueError(f"{vm.instance_type} has {vm.gpus} GPUs; a {kind} replica needs {per_replica}")
        resources = {"GPU": vm.gpus} | ({f"accelerator_type:{kind}": 1} if kind != "ANY" else {})
        replicas_per_vm = vm.gpus // per_replica
        node_types[group["groupName"]] = {
            "resources": resources,
            "node_config": {"InstanceType": vm.instance_type},
            "min_workers": 0,
            "max_workers": math.ceil(group["maxReplicas"] / replicas_per_vm),
        }
    return {
        "cluster_name": config.cluster.name,
        "max_workers": sum(t["max_workers"] for t in node_types.values()),
        "idle_timeout_minutes": max(1, config.cluster.autoscaler_idle_timeout_s // 60),
        "provider": {"type": "aws", "region": launcher.region, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": node_types,
        "head_node_type": "head",
        "file_mounts": {SERVE_CONFIG_PATH: "cluster/serve-config.yaml"},
        "setup_commands": [f"pip install '{launcher.install}'"],
        "head_start_ray_commands": [
            "ray stop",
            "ray start --head --port=6379 --dashboard-host=0.0.0.0 --metrics-export-port=8080 "
            "--autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379 --metrics-export-port=8080"],
    }
