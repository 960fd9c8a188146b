"""The engine pool: vLLM replicas on Ray Serve, built on Ray Serve LLM's LLMServer."""

from llm_serve.engine.pool import build_engine_deployment, build_llm_config, engine_deployment_name

__all__ = ["build_engine_deployment", "build_llm_config", "engine_deployment_name"]
