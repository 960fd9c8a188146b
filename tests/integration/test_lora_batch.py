"""Multi-LoRA batching on the real CPU vLLM engine: a request's output must not depend on its batch mates.

vLLM 0.32's CPU LoRA ops give no-adapter rows (index -1) the LAST adapter slot, so a base request
batched with adapter requests silently gets an adapter applied. `llm_serve.engine.vllm_plugin` fixes
that through vLLM's `vllm.general_plugins` entry point, i.e. inside the engine process itself. This
runs one offline `vllm.LLM` per mode in a subprocess (vLLM spawns its engine core, and each mode
needs a fresh process for the plugin to load or not): with the fix, every request in a mixed batch
gives exactly what it gives alone; with `LLM_SERVE_DISABLE_LORA_FIX=1`, base requests go wrong, which
shows that this test catches the bug.

The model is the tiny random Llama (2 heads so head_dim is 32, the smallest the CPU attention
backend takes) with two PEFT adapters of large random weights, so adapters visibly change outputs.
Both adapter slots (`max_loras=2`) are filled: the bug only shows when the last slot holds an adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_serve.engine import vllm_plugin
from tests.tiny_model import build_vllm_tiny_llama

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 600
RESULT_MARKER = "LORA_BATCH_RESULT="
BASE_PROMPTS = [
    "the quick brown fox",
    "hello world, how are",
    "to cancel your subscription",
    "the lazy dog jumps over",
    "how are you today? the",
    "call the support line to",
]
ADAPTER_PROMPTS = [
    "the quick brown dog",
    "hello fox, how are",
    "to call your support",
    "the lazy fox jumps over",
    "how are you? the quick",
    "cancel the subscription line",
]

ENGINE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys


    def main() -> None:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        model, adapter_a, adapter_b, prompts_json, marker = sys.argv[1:6]
        prompts = json.loads(prompts_json)
        base, adapted = prompts["base"], prompts["adapter"]
        loras = [LoRARequest("a", 1, adapter_a), LoRARequest("b", 2, adapter_b)]
        lora_of = [loras[i % 2] for i in range(len(adapted))]
        llm = LLM(
            model=model,
            enable_lora=True,
            max_loras=2,
            max_lora_rank=8,
            enforce_eager=True,
            dtype="float32",
            max_model_len=128,
            max_num_seqs=32,
            seed=0,
            gpu_memory_utilization=0.2,
        )
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)

        def ids(outputs):
            return [list(o.outputs[0].token_ids) for o in outputs]

        # Every prompt alone without adapter first, while no adapter is loaded: the base prompts' reference,
        # and for the adapter prompts what the adapter must change.
        no_adapter = [ids(llm.generate([p], params, use_tqdm=False))[0] for p in base + adapted]
        base_alone, adapter_prompts_base = no_adapter[: len(base)], no_adapter[len(base) :]
        adapter_alone = [
            ids(llm.generate([p], params, lora_request=lora, use_tqdm=False))[0]
            for p, lora in zip(adapted, lora_of)
        ]
        # One call, interleaved: base, adapter a, base, adapter b, ... all scheduled in the same batches.
        mixed_prompts, mixed_loras = [], []
        for i in range(max(len(base), len(adapted))):
            if i < len(base):
                mixed_prompts.append(base[i])
                mixed_loras.append(None)
            if i < len(adapted):
                mixed_prompts.append(adapted[i])
                mixed_loras.append(lora_of[i])
        mixed = ids(llm.generate(mixed_prompts, params, lora_request=mixed_loras, use_tqdm=False))
        mixed_base = [out for out, lora in zip(mixed, mixed_loras) if lora is None]
        mixed_adapter = [out for out, lora in zip(mixed, mixed_loras) if lora is not None]
        result = {
            "base_alone": base_alone,
            "adapter_alone": adapter_alone,
            "adapter_prompts_base": adapter_prompts_base,
            "mixed_base": mixed_base,
            "mixed_adapter": mixed_adapter,
        }
        print(marker + json.dumps(result), flush=True)


    if __name__ == "__main__":  # vLLM spawns its engine core, which re-imports this file
        main()
    """
)


@dataclass(frozen=True)
class Artifacts:
    model: Path
    adapter_a: Path
    adapter_b: Path
    script: Path
    workdir: Path


@dataclass(frozen=True)
class RunResult:
    base_alone: list[list[int]]
    adapter_alone: list[list[int]]
    adapter_prompts_base: list[list[int]]
    mixed_base: list[list[int]]
    mixed_adapter: list[list[int]]
    log: str


def _build_adapter(model: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA with large random A and B, so that it changes greedy outputs on almost every prompt."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(model, torch_dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(50.0)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("lora-batch")
    model = build_vllm_tiny_llama(root / "model")
    script = root / "run_engine.py"
    script.write_text(ENGINE_SCRIPT)
    return Artifacts(
        model=model,
        adapter_a=_build_adapter(model, root / "adapter-a", seed=1),
        adapter_b=_build_adapter(model, root / "adapter-b", seed=2),
        script=script,
        workdir=root,
    )


def _run_engine(artifacts: Artifacts, *, fix: bool) -> RunResult:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    env.pop(vllm_plugin.DISABLE_ENV, None)
    if not fix:
        env[vllm_plugin.DISABLE_ENV] = "1"
    prompts = json.dumps({"base": BASE_PROMPTS, "adapter": ADAPTER_PROMPTS})
    args = [str(artifacts.adapter_a), str(artifacts.adapter_b), prompts, RESULT_MARKER]
    proc = subprocess.run(
        [sys.executable, str(artifacts.script), str(artifacts.model), *args],
        # Not the checkout: a stale llm_serve.egg-info there would shadow the installed entry points.
        cwd=artifacts.workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert proc.returncode == 0 and lines, f"engine run failed ({proc.returncode}):\n{proc.stdout[-8000:]}"
    return RunResult(**json.loads(lines[-1][len(RESULT_MARKER) :]), log=proc.stdout)


def _differing(got: list[list[int]], expected: list[list[int]]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]


def test_mixed_batch_matches_alone_with_fix_and_not_without(artifacts: Artifacts) -> None:
    fixed = _run_engine(artifacts, fix=True)
    assert "patched vLLM" in fixed.log, "the vllm.general_plugins entry point did not run in the engine"

    # The adapters are real: alone, they change what most prompts generate.
    changed = _differing(fixed.adapter_alone, fixed.adapter_prompts_base)
    assert len(changed) >= len(ADAPTER_PROMPTS) - 1, f"adapters changed only prompts {changed}"
    # The fix: batch mates do not matter, for base and adapter requests alike.
    assert _differing(fixed.mixed_base, fixed.base_alone) == []
    assert _differing(fixed.mixed_adapter, fixed.adapter_alone) == []

    broken = _run_engine(artifacts, fix=False)
    assert "patched vLLM" not in broken.log
    assert broken.base_alone == fixed.base_alone  # alone, base requests are right even without the fix
    wrong = _differing(broken.mixed_base, broken.base_alone)
    sys.stderr.write(f"without the fix, {len(wrong)} of {len(BASE_PROMPTS)} mixed-batch base requests differ\n")
    assert wrong, "without the fix the mixed batch should give base requests an adapter (the bug)"
