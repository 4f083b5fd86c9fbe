"""Usage updates, sent in the background: buffered while a post is in flight and sent
together through `/v1/usage/batch`, retried with backoff until Heimdall takes them. Every
update carries its `request_id` and `attempt`, so a retry of an update that did land is a
duplicate to Heimdall and counts nothing twice. Nothing here ever blocks a response."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from .client import HeimdallClient, Unavailable

log = logging.getLogger("heimdall_litellm")

JSON = dict[str, Any]


class UsageReporter:
    def __init__(self, client: HeimdallClient, batch_max: int = 500, buffer_max: int = 100_000):
        self._client = client
        self._batch_max = batch_max
        self._buffer_max = buffer_max
        self._pending: deque[JSON] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self.sent = 0
        self.duplicates = 0
        self.dropped = 0
        self.retries = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, update: JSON) -> None:
        """Queues one update; returns at once. Must be called on the proxy's event loop."""
        if len(self._pending) >= self._buffer_max:
            lost = self._pending.popleft()
            self.dropped += 1
            log.error(
                "heimdall: usage buffer full (%d updates; HEIMDALL_BUFFER_MAX): dropped the update of "
                "request %s; Heimdall has been unreachable for long",
                self._buffer_max,
                lost.get("request_id"),
            )
        self._pending.append(update)
        self._ensure_running()
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()

    async def drain(self, timeout: float) -> bool:
        """Waits until everything queued has been sent (or dropped as invalid)."""
        if not self._pending:
            return True
        self._ensure_running()
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._idle = asyncio.Event()
            self._task = loop.create_task(self._run(), name="heimdall-usage-reporter")

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        backoff = 0.05
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(self._batch_max, len(self._pending)))]
            try:
                sent = await self._client.send_usage(batch)
            except Unavailable as e:
                self.retries += 1
                log.warning(
                    "heimdall: %d usage updates not delivered (%s); retrying in %.2fs", len(batch), e, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop reporting for good
                log.exception("heimdall: unexpected error sending usage; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            if sent.rejected:
                # Heimdall rejected these as invalid and applied nothing of the batch: drop them,
                # send the rest again.
                bad = {index: message for index, message in sent.rejected if 0 <= index < len(batch)}
                if not bad:  # an answer that names no item of the batch: drop it all, loudly
                    bad = {index: "rejected without details" for index in range(len(batch))}
                keep = [u for i, u in enumerate(batch) if i not in bad]
                for index, message in bad.items():
                    self.dropped += 1
                    log.error("heimdall: usage update of request %s rejected: %s", batch[index].get("request_id"), message)
                for _ in batch:
                    self._pending.popleft()
                self._pending.extendleft(reversed(keep))
                continue
            for _ in batch:
                self._pending.popleft()
            self.sent += sent.accepted
            self.duplicates += sent.duplicates
