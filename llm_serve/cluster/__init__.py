"""Beyond one machine: KubeRay manifests, the Ray cluster launcher file and the Serve config, generated
from an llm-serve config (`llm-serve cluster render`) and validated offline (`llm-serve cluster validate`)."""
