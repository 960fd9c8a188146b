"""API keys: who is calling, and may they call this model.

Keys are compared by SHA-256 only: the config holds hashes (or the names of environment variables,
hashed as soon as they are read), so neither a config file nor a memory dump of the router leaks a
usable key. Both `Authorization: Bearer <key>` (the OpenAI SDK) and `x-api-key` are accepted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from llm_serve.config import ApiKey, AuthConfig
from llm_serve.router.errors import OpenAIError

ANONYMOUS = "anonymous"
KEY_PREFIX = "sk-llms-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its hash (for `llm-serve keys create`)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


@dataclass(frozen=True)
class Caller:
    """The authenticated tenant of one request; `key` is None when auth is off."""

    name: str
    key: ApiKey | None

    def may_use(self, model_id: str) -> bool:
        return self.key is None or self.key.models is None or model_id in self.key.models

    def may_use_alias(self, alias_id: str, collection: str) -> bool:
        """A RAG alias reaches a collection: the key must name the alias itself (not just allow every model)
        or be allowed the collection."""
        if self.key is None:
            return True
        named = self.key.models is not None and alias_id in self.key.models
        return named or self.may_search(collection)

    def may_search(self, collection: str) -> bool:
        """Whether the key may name `collection` itself (a RAG alias it may use reaches its own anyway)."""
        return self.key is None or "*" in self.key.collections or collection in self.key.collections

    def may_render(self, prompt: str) -> bool:
        return self.key is None or self.key.prompts is None or prompt in self.key.prompts


# The caller of every request when auth is off (no keys configured).
OPEN = Caller(ANONYMOUS, None)


class KeyRing:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = bool(config.keys)
        self._by_hash: dict[str, ApiKey] = {}
        for key in config.keys:
            digest = key.key_sha256
            if key.key_env is not None:
                secret = os.environ.get(key.key_env)
                if not secret:
                    raise ValueError(f"API key {key.name!r}: environment variable {key.key_env} is not set")
                digest = hash_key(secret)
            assert digest is not None
            self._by_hash[digest] = key

    def caller_named(self, name: str) -> Caller | None:
        """The caller a key's name stands for (work accepted earlier and run later, as a batch); None once
        the key is gone from the config."""
        if not self.enabled:
            return OPEN if name == ANONYMOUS else None
        key = next((k for k in self._by_hash.values() if k.name == name), None)
        return None if key is None else Caller(key.name, key)

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """The caller of a request with these HTTP headers (401 when a key is needed and wrong or missing)."""
        return self.authenticate(headers.get("authorization"), headers.get("x-api-key"))

    def authenticate(self, authorization: str | None, x_api_key: str | None) -> Caller:
        if not self.enabled:
            return OPEN
        presented = x_api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                presented = value.strip()
        if not presented:
            raise OpenAIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        # The lookup is by hash of the presented key, so its timing says nothing about stored keys.
        key = self._by_hash.get(hash_key(presented))
        if key is None:
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return Caller(key.name, key)
