"""Our config becomes the LLMConfig Ray Serve LLM expects, with vLLM's CPU knobs in the replica env."""

from llm_serve.config import ModelConfig, parse_config
from llm_serve.engine.pool import build_llm_config, deployment_options, engine_deployment_name, engine_env


def _model(**engine: object) -> ModelConfig:
    return parse_config({"models": [{"id": "m", "source": "s", "engine": engine}]}).models[0]


def test_cpu_engine_sets_kv_cache_and_offline_env() -> None:
    env = engine_env(_model(kv_cache_gib=3))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_llm_config_carries_engine_args_and_autoscaling() -> None:
    model = parse_config(
        {
            "models": [
                {
                    "id": "m",
                    "source": "s",
                    "engine": {"max_model_len": 1024, "dtype": "float32", "extra_engine_args": {"block_size": 32}},
                    "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8},
                }
            ]
        }
    ).models[0]
    cfg = build_llm_config(model, "/models/m")
    assert cfg.model_id == "m"
    assert cfg.engine_kwargs["max_model_len"] == 1024
    assert cfg.engine_kwargs["dtype"] == "float32"
    assert cfg.engine_kwargs["block_size"] == 32
    assert cfg.engine_kwargs["gpu_memory_utilization"] == model.engine.cpu_memory_utilization
    assert cfg.accelerator_config.kind == "cpu"
    scaling = cfg.deployment_config["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 3, 8)


def test_gpu_engine_uses_gpu_memory_and_accelerator_type() -> None:
    model = _model(accelerator="gpu", accelerator_type="L4", tensor_parallel_size=2)
    cfg = build_llm_config(model, "org/model")
    assert cfg.accelerator_config.kind == "gpu"
    assert cfg.accelerator_type == "L4"
    assert cfg.engine_kwargs["tensor_parallel_size"] == 2
    assert cfg.engine_kwargs["gpu_memory_utilization"] == 0.9
    assert "ray_actor_options" not in deployment_options(model)


def test_deployment_names_are_serve_safe() -> None:
    assert engine_deployment_name("org/model-1.5b:v2") == "engine-org--model-1_5b-v2"


def test_one_cpu_worker_runs_in_the_engine_core(monkeypatch) -> None:
    """CPU pools with one worker get the uniprocess executor (as vLLM's own server); others keep Ray's choice."""
    from types import SimpleNamespace

    from llm_serve.engine.cpu_engine import SingleProcessCpuEngine
    from llm_serve.engine.lora_server import SINGLE_PROCESS_KEY, RegistryLoraServer
    from llm_serve.engine.ray_llm import VLLMEngine

    cpu = build_llm_config(ModelConfig(id="m", source="x"), "/models/m")
    assert cpu.experimental_configs[SINGLE_PROCESS_KEY] is True
    off = build_llm_config(ModelConfig(id="m", source="x", engine={"cpu_single_process": False}), "/models/m")
    gpu = build_llm_config(ModelConfig(id="m", source="x", engine={"accelerator": "gpu"}), "/models/m")
    assert SINGLE_PROCESS_KEY not in off.experimental_configs and SINGLE_PROCESS_KEY not in gpu.experimental_configs

    def server(llm_config: object) -> RegistryLoraServer:
        instance = object.__new__(RegistryLoraServer)  # only the config is consulted
        instance._llm_config = llm_config
        return instance

    assert server(cpu)._get_default_engine_class() is SingleProcessCpuEngine
    # Every other layout keeps Ray Serve LLM's engine, which only also keeps the scheduler's load (engine_load.py).
    from llm_serve.engine.cpu_engine import LoadReportingEngine

    assert server(off)._get_default_engine_class() is LoadReportingEngine
    assert server(gpu)._get_default_engine_class() is LoadReportingEngine
    assert issubclass(LoadReportingEngine, VLLMEngine) and issubclass(SingleProcessCpuEngine, LoadReportingEngine)

    started: list[str] = []
    monkeypatch.setattr(
        VLLMEngine,
        "_start_async_llm_engine",
        lambda self, args, config, pg: started.append(config.parallel_config.distributed_executor_backend),
    )
    for world, backend in ((1, "mp"), (2, "mp")):
        config = SimpleNamespace(
            parallel_config=SimpleNamespace(world_size=world, distributed_executor_backend=backend)
        )
        SingleProcessCpuEngine._start_async_llm_engine(object.__new__(SingleProcessCpuEngine), None, config, None)
    assert started == ["uni", "mp"]


def test_custom_resources_pin_the_pool_to_the_nodes_that_have_them() -> None:
    """Ray Serve LLM merges the replica actor's resources into its placement group's first bundle, so the engine
    replica is placed only on a node advertising `engine_node` (seen on two real nodes in
    tests/integration/test_multinode.py; importing LLMServer here would install Ray's tracer provider in the
    unit tests' process)."""
    model = parse_config({"models": [{"id": "m", "source": "s", "resources": {"engine_node": 1}}]}).models[0]
    assert deployment_options(model)["ray_actor_options"] == {"num_cpus": 1.0, "resources": {"engine_node": 1.0}}
    assert build_llm_config(model, "/models/m").deployment_config["ray_actor_options"]["resources"] == {
        "engine_node": 1.0
    }
    assert (
        "resources"
        not in deployment_options(parse_config({"models": [{"id": "m", "source": "s"}]}).models[0])["ray_actor_options"]
    )
