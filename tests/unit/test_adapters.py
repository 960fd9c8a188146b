"""The adapter registry, and the router serving `<base>:<adapter>` ids from it (stand-in engines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_serve.adapters import METADATA_FILE, AdapterRegistry
from llm_serve.engine.lora_server import AdapterNotFound, split_adapter_id
from tests.unit.fakes import A, B, Engine, FakeHandle, assert_openai_error, build, chat


def fake_adapter(tmp: Path, marker: str = "v1") -> Path:
    src = tmp / f"adapter-src-{marker}"
    src.mkdir(parents=True)
    (src / "adapter_config.json").write_text(json.dumps({"r": 8, "marker": marker}))
    (src / "adapter_model.safetensors").write_bytes(b"weights-" + marker.encode())
    return src


def test_publish_list_and_replace(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "registry")
    assert registry.list() == []
    info = registry.publish(fake_adapter(tmp_path), "faq", {"base_model_id": A, "dataset_hash": "abc"})
    assert info.model_id == f"{A}:faq" and info.metadata["created_at"]
    assert (Path(info.path) / METADATA_FILE).is_file()
    again = registry.publish(fake_adapter(tmp_path, "v2"), "faq", {"base_model_id": A})
    assert json.loads((Path(again.path) / "adapter_config.json").read_text())["marker"] == "v2"
    assert [a.name for a in registry.list()] == ["faq"]
    assert not [p for p in (tmp_path / "registry").iterdir() if p.name.startswith(".")], "no staging left"
    assert AdapterRegistry(f"file://{tmp_path / 'registry'}").get("faq") is not None


def test_half_copied_adapters_are_not_listed(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "adapter_config.json").write_text("{}")
    assert registry.list() == []
    with pytest.raises(FileNotFoundError):
        registry.publish(tmp_path / "partial-does-not-exist", "x", {})


def test_adapter_ids() -> None:
    assert split_adapter_id("smollm2-135m-instruct:faq") == ("smollm2-135m-instruct", "faq")
    assert split_adapter_id("org/model:v1:faq") == ("org/model:v1", "faq")
    with pytest.raises(AdapterNotFound):
        split_adapter_id("no-adapter")


class RecordingHandle(FakeHandle):
    """Remembers the multiplexed model id each call was sent with."""

    def __init__(self, behaviour: Any) -> None:
        super().__init__(behaviour)
        self.multiplexed: list[str | None] = []
        self._pending: str | None = None

    def options(self, **kwargs: Any) -> RecordingHandle:
        self._pending = kwargs.get("multiplexed_model_id", self._pending)
        return self

    def __getattr__(self, name: str) -> Any:
        method = super().__getattr__(name)
        if name not in ("check_health",):
            self.multiplexed.append(self._pending)
            self._pending = None
        return method


async def test_router_serves_registered_adapters_by_id_and_name(tmp_path: Path) -> None:
    registry = tmp_path / "adapters"
    AdapterRegistry(registry).publish(fake_adapter(tmp_path), "faq", {"base_model_id": A})
    engine = Engine(A)
    engine.handle = RecordingHandle(engine.behaviour)
    lora = {"enabled": True, "registry": str(registry), "refresh_s": 0}
    client, _, state = build(
        {
            "models": [
                {
                    "id": A,
                    "source": "x",
                    "price": {"input_per_1m": 1.0},
                    "lora": lora,
                    "adapter_prices": {"faq": {"input_per_1m": 3.0}},
                },
                {"id": B, "source": "x"},
            ]
        },
        engines={A: engine, B: Engine(B)},
    )
    async with client:
        by_id = await client.post("/v1/chat/completions", json=chat(f"{A}:faq"))
        by_name = await client.post("/v1/chat/completions", json=chat("faq"))
        unknown = await client.post("/v1/chat/completions", json=chat(f"{A}:nope"))
        base = await client.post("/v1/chat/completions", json=chat(A))
        listed = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        card = (await client.get(f"/v1/models/{A}:faq")).json()
    assert by_id.status_code == by_name.status_code == base.status_code == 200
    assert by_id.headers["x-llm-serve-model"] == f"{A}:faq"
    assert_openai_error(unknown, 404, "model_not_found")
    assert engine.handle.multiplexed == [f"{A}:faq", f"{A}:faq", None]
    assert [c[1].model for c in engine.calls] == [f"{A}:faq", f"{A}:faq", A]
    assert f"{A}:faq" in listed and card["parent"] == A and card["type"] == "adapter"
    rows = await state.recent(1000)
    assert [r["adapter"] for r in reversed(rows) if r["status"] == 200] == ["faq", "faq", None]
    assert float(by_id.headers["x-llm-serve-cost-usd"]) == pytest.approx(5 * 3.0 / 1e6), "the adapter's own price"


async def test_adapter_published_later_is_served_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llm_serve.router.adapter_catalog.FORCED_RELIST_S", 0.0)
    registry = tmp_path / "adapters"
    lora = {"enabled": True, "registry": str(registry), "refresh_s": 3600}
    client, _, _ = build({"models": [{"id": A, "source": "x", "lora": lora}, {"id": B, "source": "x"}]})
    async with client:
        assert_openai_error(await client.post("/v1/chat/completions", json=chat(f"{A}:late")), 404)
        AdapterRegistry(registry).publish(fake_adapter(tmp_path), "late", {"base_model_id": A})
        assert (await client.post("/v1/chat/completions", json=chat(f"{A}:late"))).status_code == 200


def test_one_name_belongs_to_one_base_model(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "registry")
    registry.publish(fake_adapter(tmp_path), "faq", {"base_model_id": A})
    with pytest.raises(ValueError, match="already exists for"):
        registry.publish(fake_adapter(tmp_path, "v2"), "faq", {"base_model_id": B})
    assert registry.get("faq").base_model_id == A
