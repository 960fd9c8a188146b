"""Every tenant in its own box: what a key can reach is what its config grants, and a request cannot widen it.

Before, any key could name any collection (and read its documents back verbatim with `include_text`),
a request's `collection` and `filter` replaced an alias's, and `filter: ""` removed the alias filter.
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_serve.config import parse_config
from llm_serve.router.auth import Caller
from llm_serve.router.errors import OpenAIError
from llm_serve.router.stages.resolve import parse_rag
from tests.unit.fakes import A, B, assert_openai_error, auth, build, chat, keys_config, sha

ALIAS = {"id": "acme-support", "model": A, "collection": "acme_docs", "filter": 'tenant == "acme"'}


def rag_config(**alice: Any) -> dict[str, Any]:
    config = keys_config(**alice)
    config["models"] = [{"id": A, "source": "x"}, {"id": B, "source": "x"}]
    config["embedding_models"] = [{"id": "all-minilm-l6-v2"}]
    config["rag"] = {"aliases": [ALIAS]}
    return config


def caller(name: str, **key: Any) -> Caller:
    config = parse_config({"auth": {"keys": [{"name": name, "key_sha256": sha(name), **key}]}})
    return Caller(name, config.auth.keys[0])


async def test_a_key_names_only_the_collections_it_is_granted() -> None:
    client, engines, _ = build(rag_config(collections=["alice_docs"]))
    async with client:
        for headers, collection in ((auth("alice"), "bob_docs"), (auth("admin"), "alice_docs")):
            body = chat(rag={"collection": collection, "include_text": True})
            err = assert_openai_error(
                await client.post("/v1/chat/completions", json=body, headers=headers), 403, "collection_not_allowed"
            )
            assert err["param"] == "rag.collection"
    assert engines[A].calls == [] and engines[B].calls == []


def test_a_granted_collection_or_a_wildcard_passes() -> None:
    config = parse_config(rag_config())
    assert parse_rag({"collection": "alice_docs"}, None, config, caller("a", collections=["alice_docs"])) is not None
    assert parse_rag({"collection": "anything"}, None, config, caller("b", collections=["*"])) is not None
    with pytest.raises(OpenAIError):
        parse_rag({"collection": "alice_docs"}, None, config, caller("c"))  # none granted by default


def test_an_alias_cannot_be_widened_only_narrowed() -> None:
    config = parse_config(rag_config())
    alias = config.rag_alias("acme-support")
    nobody = caller("nobody")  # no collections of its own: the alias reaches its collection anyway
    assert parse_rag(None, alias, config, nobody).filter == 'tenant == "acme"'
    assert parse_rag({"filter": ""}, alias, config, nobody).filter == 'tenant == "acme"'
    narrowed = parse_rag({"filter": 'source like "%.md"'}, alias, config, nobody)
    assert narrowed.collection == "acme_docs"
    assert narrowed.filter == '(tenant == "acme") and (source like "%.md")'
    with pytest.raises(OpenAIError) as other:
        parse_rag({"collection": "globex_docs"}, alias, config, nobody)
    assert (other.value.status, other.value.param) == (400, "rag.collection")
    for escape in ("x == 1) or (1 == 1", "x == 1))", "(x == 1", 'source == "a) or (b"'[:-1]):
        with pytest.raises(OpenAIError) as bad:
            parse_rag({"filter": escape}, alias, config, nobody)
        assert (bad.value.status, bad.value.code) == (400, "invalid_filter")
    # a parenthesis inside a string literal is just text
    quoted = parse_rag({"filter": 'source == "a) or (b"'}, alias, config, nobody)
    assert quoted.filter == '(tenant == "acme") and (source == "a) or (b")'


async def test_models_lists_only_what_the_key_may_call() -> None:
    config = rag_config(models=[A])  # alice may call A, but not the RAG alias built on A
    config["routing"] = {"aliases": {"fast": B}}
    client, _, _ = build(config)
    async with client:
        listed = [m["id"] for m in (await client.get("/v1/models", headers=auth("alice"))).json()["data"]]
        assert listed == [A]
        assert_openai_error(await client.get("/v1/models/acme-support", headers=auth("alice")), 404)
        assert_openai_error(await client.get("/v1/models/fast", headers=auth("alice")), 404)
        bob = [m["id"] for m in (await client.get("/v1/models", headers=auth("bob"))).json()["data"]]
        assert bob == [B, "fast"]  # bob may use B, and so its routing alias
        admin = [m["id"] for m in (await client.get("/v1/models", headers=auth("admin"))).json()["data"]]
        assert set(admin) == {A, B, "fast"}, "every model, but no RAG alias over a collection it may not search"


async def test_a_key_uses_only_the_prompts_it_is_granted() -> None:
    client, engines, _ = build(keys_config(prompts=["ticket-triage"]), prompts=True)
    async with client:
        body = chat(prompt={"name": "support-answer", "variables": {"question": "hi"}})
        assert_openai_error(
            await client.post("/v1/chat/completions", json=body, headers=auth("alice")), 403, "prompt_not_allowed"
        )
    assert engines[A].calls == []


@pytest.mark.parametrize("path", ["/admin/usage", "/admin/requests", "/admin/cache", "/admin/traces"])
async def test_admin_routes_need_an_admin_key(path: str) -> None:
    client, _, _ = build(keys_config())
    async with client:
        assert_openai_error(await client.get(path, headers=auth("alice")), 403, "admin_only")
        assert_openai_error(await client.get(path), 401)


async def test_a_key_allowed_every_model_does_not_reach_an_aliass_collection() -> None:
    """`models: null` means every model, not every tenant's knowledge base behind a RAG alias."""
    config = rag_config()  # alice: models None, no collections
    config["auth"]["keys"].append({"name": "acme", "key_sha256": sha("sk-acme"), "collections": ["acme_docs"]})
    client, engines, _ = build(config)
    async with client:
        refused = await client.post("/v1/chat/completions", json=chat("acme-support"), headers=auth("alice"))
        assert_openai_error(refused, 403, "model_not_allowed")
        listed = [m["id"] for m in (await client.get("/v1/models", headers=auth("alice"))).json()["data"]]
        assert "acme-support" not in listed
        acme = {"authorization": "Bearer sk-acme"}
        assert "acme-support" in [m["id"] for m in (await client.get("/v1/models", headers=acme)).json()["data"]]
    assert engines[A].calls == []
