"""From the engine's thread to the client: events onto the event loop, then out as server-sent events.

The engine calls each request's `on_event` from its own thread; `loop.call_soon_threadsafe` hands
the event to the asyncio loop that serves the HTTP request, where it waits in a queue. One HTTP
request may run several generations (a list of prompts, `n` > 1): their events share the queue,
tagged with the choice's index.

Server-sent events (the WHATWG HTML standard, section 9.2): each message is a `data: ...` line and
a blank line; OpenAI's streams send one JSON chunk per message and end with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from functools import partial

from lmlab.generation.engine import Engine, EngineRequest, RequestHandle, TokenEvent


def sse(data: dict | str) -> bytes:
    """One server-sent event carrying a JSON object (or a literal such as [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class RequestGroup:
    """The generations behind one HTTP request, submitted to the engine, their events as one async stream.

    `on_done(seconds)` is called on the event loop when each generation ends (it frees its place in
    the admission count, whoever is still listening).
    """

    def __init__(self, engine: Engine, requests: list[EngineRequest], on_done: Callable[[float], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()
        self.on_done = on_done
        self.start = time.perf_counter()
        self.open = len(requests)
        self.handles: list[RequestHandle] = []
        try:
            for index, request in enumerate(requests):
                request.on_event = partial(self._from_engine, index)
                self.handles.append(engine.submit(request))
        except BaseException:
            self.cancel()
            for _ in range(len(requests) - len(self.handles)):
                on_done(0.0)
            raise

    @property
    def finished(self) -> bool:
        return self.open == 0

    def _from_engine(self, index: int, event: TokenEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self._arrive, index, event)
        except RuntimeError:  # the loop has closed: nobody listens any more
            pass

    def _arrive(self, index: int, event: TokenEvent) -> None:
        if event.finish_reason is not None:
            self.open -= 1
            self.on_done(time.perf_counter() - self.start)
        self.events.put_nowait((index, event))

    async def __aiter__(self):
        """(choice index, event) pairs until every generation has sent its last event."""
        remaining = len(self.handles)
        while remaining:
            index, event = await self.events.get()
            remaining -= event.finish_reason is not None
            yield index, event

    def cancel(self) -> None:
        """Stop every generation still running: the engine frees their slots at its next step."""
        for handle in self.handles:
            if not handle.done:
                handle.cancel()
