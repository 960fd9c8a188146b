"""Training recipes, the DeepSpeed config they produce, and the data schedule (no Ray, no DeepSpeed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_serve.config import ConfigError
from train.config import load_train_config, parse_train_config
from train.trainer import deepspeed_config, epoch_order, schedule

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "r", "data": {"path": "data/faq/train.jsonl"}, "output": {"adapter_name": "a"}}


def test_bundled_recipe_loads() -> None:
    cfg = load_train_config(ROOT / "configs" / "train" / "faq-lora.yaml")
    assert cfg.method.kind == "lora" and cfg.scaling.num_workers == 2 and cfg.served_base == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"method": {"kind": "qlora"}}, "qlora needs GPUs"),
        ({"output": {"adapter_name": "bad name!"}}, "adapter_name"),
        ({"optim": {"learning_rate": 0}}, "optim.learning_rate"),
        ({"dtype": "float8"}, "dtype"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_recipes_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_train_config({**BASE, **patch})
    assert field in str(err.value)


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_deepspeed_config_is_filled_from_the_recipe(name: str) -> None:
    cfg = parse_train_config(
        {
            **BASE,
            "optim": {"learning_rate": 0.001, "micro_batch_size": 3, "gradient_accumulation_steps": 2},
            "deepspeed": {"config": f"configs/deepspeed/{name}", "offload_optimizer": True},
        }
    )
    ds = deepspeed_config(cfg, world_size=2, total_steps=10)
    assert ds["train_batch_size"] == 12 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["optimizer"]["params"] == {"torch_adam": True, "lr": 0.001, "weight_decay": 0.0}
    assert ds["scheduler"]["params"]["total_num_steps"] == 10
    assert ds["scheduler"]["params"]["warmup_min_lr"] == 0.001, "no warm-up: the first step is not wasted at lr 0"
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "auto" not in str(ds)


def test_schedule_and_data_order_are_seeded_and_disjoint() -> None:
    cfg = parse_train_config({**BASE, "optim": {"micro_batch_size": 4, "epochs": 3}})
    assert schedule(40, 2, cfg) == (5, 15)
    a, b = epoch_order(40, 0, 7, 0, 2), epoch_order(40, 0, 7, 1, 2)
    assert len(a) == len(b) == 20 and not set(a) & set(b)
    assert a == epoch_order(40, 0, 7, 0, 2) and a != epoch_order(40, 1, 7, 0, 2)
    assert epoch_order(41, 0, 7, 0, 2).__len__() == 20, "ranks get equal shares (the remainder is dropped)"
