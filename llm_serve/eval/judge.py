"""The LLM judge: any OpenAI-compatible endpoint (this server included) wrapped for ragas.

ragas 0.4's metric collections accept only its "modern" components: an instructor-backed LLM from
`llm_factory` and an embeddings provider class. Both are given the OpenAI SDK's async client pointed
at the judge's base URL, so nothing here is specific to OpenAI the company.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_serve.eval.client import api_base
from llm_serve.eval.metrics import load_ragas
from llm_serve.eval.settings import JudgeOptions

# The SDK insists on a key; an open endpoint ignores whatever is sent.
NO_KEY = "not-needed"


@dataclass
class JudgeMetrics:
    """The judged metric objects, ready for `ascore`; answer_relevancy is None without embeddings."""

    faithfulness: Any
    answer_relevancy: Any | None
    base_url: str
    model: str
    embedding_model: str | None
    client: Any = None

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.base_url, "model": self.model, "embedding_model": self.embedding_model}

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


def build_judge(options: JudgeOptions, fallback_key: str | None) -> JudgeMetrics:
    load_ragas()  # sets RAGAS_DO_NOT_TRACK before the first ragas import
    from openai import AsyncOpenAI
    from ragas.embeddings import OpenAIEmbeddings
    from ragas.llms import llm_factory
    from ragas.metrics.collections import AnswerRelevancy, Faithfulness

    base = api_base(options.endpoint)
    client = AsyncOpenAI(
        base_url=base,
        api_key=options.api_key or fallback_key or NO_KEY,
        timeout=options.timeout_s,
        max_retries=0,  # transport failures count as judge failures; instructor re-asks on bad output
    )
    llm = llm_factory(
        options.model,
        client=client,
        temperature=options.temperature,
        max_tokens=options.max_tokens,
        max_retries=options.attempts - 1,  # instructor counts re-asks, not attempts
    )
    relevancy = None
    if options.embedding_model:
        embeddings = OpenAIEmbeddings(client=client, model=options.embedding_model)
        relevancy = AnswerRelevancy(llm=llm, embeddings=embeddings, strictness=options.relevancy_questions)
    return JudgeMetrics(
        faithfulness=Faithfulness(llm=llm),
        answer_relevancy=relevancy,
        base_url=base,
        model=options.model,
        embedding_model=options.embedding_model,
        client=client,
    )
