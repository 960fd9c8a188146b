"""The background runner of batches, one per router replica.

It claims a batch (a lease in the store), validates its input file, and sends its lines through the
replica's own request path (keys' limits and budget, prompts, caches, the ledger: a batch line is a
request like any other, made as the batch's key, with `api: batch` and the batch discount), a few at
a time and only while interactive requests leave room. Each answer is written with its line, so a
restart resumes at the first unanswered line. At the end the output and error files are written and
the batch is `completed`; a cancelled batch finishes the lines in flight and keeps what was answered;
an expired one fails its unanswered lines with `batch_expired`, as OpenAI's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from llm_serve.config import BatchConfig
from llm_serve.router.auth import Caller
from llm_serve.router.batches.input_file import ENDPOINTS, parse_lines
from llm_serve.router.batches.store import BatchStore, Line

logger = logging.getLogger("llm_serve.router")

# Refusals that say "not now" rather than "never": the line waits and is tried again.
RETRY_CODES = {"overloaded", "state_unavailable", "ledger_unavailable", "engine_unavailable", "rate_limit_exceeded"}


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    request_id: str
    cost_usd: float


# (route, caller, body, request id, price factor) -> the answer, as the HTTP path would give it.
Execute = Callable[[str, Caller, dict[str, Any], str, float], Awaitable[Answer]]


class BatchRunner:
    def __init__(
        self,
        config: BatchConfig,
        store: BatchStore,
        execute: Execute,
        caller_named: Callable[[str], Caller | None],
        interactive: Callable[[], int],
    ) -> None:
        self.config = config
        self.store = store
        self.execute = execute
        self.caller_named = caller_named  # None: the batch's key is gone (revoked)
        self.interactive = interactive  # interactive requests in flight on this replica
        self.owner = f"runner-{uuid.uuid4().hex[:12]}"
        self.inflight = 0  # this runner's lines in flight (the replica counts them as in flight too)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="llm-serve-batch-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def wake(self) -> None:
        """A batch was created or cancelled here: look now rather than at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                batch = await self.store.call(self.store.claim, self.owner, self.config.lease_s)
                if batch is not None:
                    await self._run(batch)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away for a moment: the batch's lease lapses, work resumes
                logger.exception("batch runner: a pass failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_s)

    async def _run(self, batch: Any) -> None:
        try:
            if batch.status == "validating" and not await self._validate(batch):
                return
            await self._work(batch.id, batch.key_name, batch.endpoint)
        finally:
            await self.store.call(self.store.release, batch.id, self.owner)

    async def _validate(self, batch: Any) -> bool:
        content = await self.store.call(self.store.file_content, batch.key_name, batch.input_file_id)
        if content is None:
            errors = [{"code": "file_not_found", "message": f"input file {batch.input_file_id} is gone", "line": None}]
            lines: list[Line] = []
        else:
            lines, errors = parse_lines(content, batch.endpoint, self.config.max_requests_per_batch)
        if errors:
            payload = json.dumps({"object": "list", "data": errors})
            await self.store.call(lambda: self.store.set_status(batch.id, "failed", errors=payload))
            logger.info("batch %s failed validation: %s", batch.id, errors[0]["message"])
            return False
        await self.store.call(self.store.add_lines, batch.id, lines)
        logger.info("batch %s: %d requests, in progress", batch.id, len(lines))
        return True

    async def _work(self, batch_id: str, key_name: str, endpoint: str) -> None:
        route = ENDPOINTS[endpoint]
        running: dict[int, asyncio.Task[bool]] = {}
        last_renew = time.monotonic()
        status, expires_at = "in_progress", float("inf")  # read from the store on the first pass
        try:
            while True:
                if time.monotonic() - last_renew > self.config.lease_s / 3 or not running:
                    row = await self.store.call(self.store.renew, batch_id, self.owner, self.config.lease_s)
                    last_renew = time.monotonic()
                    if row is None:  # another replica holds it now (this one stalled past its lease)
                        return
                    status, expires_at = row.status, row.expires_at
                if status in ("cancelling", "finalizing") or time.time() >= expires_at:
                    break
                caller = self.caller_named(key_name)
                if caller is None:
                    await self.store.call(
                        self.store.fail_pending, batch_id, "key_revoked", "the batch's API key no longer exists"
                    )
                    break
                room = self.config.concurrency - len(running)
                if room > 0 and self.interactive() <= self.config.max_interactive_inflight:
                    for line in await self.store.call(self.store.pending, batch_id, room, set(running)):
                        running[line.line] = asyncio.get_running_loop().create_task(
                            self._line(batch_id, route, caller, line)
                        )
                if not running:
                    pending = await self.store.call(self.store.pending, batch_id, 1, set())
                    if not pending:
                        status = "finalizing"
                        break
                    await asyncio.sleep(self.config.retry_backoff_s / 4)  # interactive traffic goes first
                    continue
                done, _ = await asyncio.wait(running.values(), timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                retry = False
                for number, task in list(running.items()):
                    if task in done:
                        del running[number]
                        retry = retry or not task.result()
                if retry:
                    await asyncio.sleep(self.config.retry_backoff_s)
            if running:  # cancelled or expired: the lines in flight are answered and kept
                await asyncio.wait(running.values())
                running.clear()
            await self._finish(batch_id, key_name, status, expires_at)
        finally:
            for task in running.values():
                task.cancel()

    async def _finish(self, batch_id: str, key_name: str, status: str, expires_at: float) -> None:
        if status == "cancelling":
            await self.store.call(
                self.store.fail_pending, batch_id, "batch_cancelled", "the batch was cancelled before this request ran"
            )
            final = "cancelled"
        elif time.time() >= expires_at and status != "finalizing":
            await self.store.call(
                self.store.fail_pending, batch_id, "batch_expired", "the batch expired before this request ran"
            )
            final = "expired"
        else:
            await self.store.call(lambda: self.store.set_status(batch_id, "finalizing"))
            final = "completed"
        await self.store.call(self.store.finalize, batch_id, key_name, final)
        logger.info("batch %s %s", batch_id, final)

    async def _line(self, batch_id: str, route: str, caller: Caller, line: Line) -> bool:
        """Answer one line and record it; False when it was refused for load and stays pending."""
        self.inflight += 1
        request_id = f"{batch_id}-{line.line}"
        try:
            body = {**line.body}
            body.pop("stream", None)  # a batch's answers are whole; streaming options mean nothing here
            body.pop("stream_options", None)
            answer = await self.execute(route, caller, body, request_id, 1.0 - self.config.discount)
        except Exception as exc:  # a bug on this path must fail one line, not the batch
            logger.exception("batch %s line %d failed", batch_id, line.line)
            answer = Answer(500, {"error": {"message": type(exc).__name__, "code": "internal_error"}}, request_id, 0.0)
        finally:
            self.inflight -= 1
        code = (answer.body.get("error") or {}).get("code") if answer.status >= 400 else None
        if code in RETRY_CODES or answer.status == 503:
            return False
        result: dict[str, Any] = {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": line.custom_id,
            "response": {"status_code": answer.status, "request_id": answer.request_id, "body": answer.body},
            "error": None,
        }
        ok = answer.status < 400
        if not ok:
            error = answer.body.get("error") or {}
            result["error"] = {"code": error.get("code"), "message": error.get("message")}
        await self.store.call(self.store.finish_line, batch_id, line.line, ok, result, answer.cost_usd)
        return True
