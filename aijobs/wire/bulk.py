"""Many jobs' calls to one bulk route, gathered into few requests, each job answered on its own.

A reconciler runs many passes at once; when they stand at the same step (a burst of new jobs all
charging, many tasks finishing together and all capturing) each would pay a whole HTTP request,
a token check and a transaction for one row. A :class:`Batcher` lets every caller ``await`` its
own item as if it made a single call, and sends what has gathered as one request of the bulk
contract (:mod:`aijobs.api.bulk`): group commit, as a database does it. There is no timer and no
added latency: an item goes out at once when no request of the route is in flight; items that
arrive while requests are in flight wait for the next one, so batches grow exactly as much as the
load makes them.

Each caller gets exactly what the single call would have given it: the answer model, or the
:class:`~aijobs.wire.client.Refused` / :class:`~aijobs.wire.client.Ambiguous` its item's own status
means. A request whose answer is lost is every item's unknown outcome: each caller retries under
its own key, which the service replays if the item had committed. A service that has no bulk route
yet (404/405: the operator was upgraded first) is called item by item on the single route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from aijobs.api.bulk import MAX_ITEMS, BulkAnswer
from aijobs.wire.client import Ambiguous, Refused, judge

if TYPE_CHECKING:
    from aijobs.wire.client import ServiceClient

__all__ = ["Batcher"]

M = TypeVar("M", bound=BaseModel)

# The single call an item stands for, for a service that has no bulk route.
Single = Callable[[], Awaitable[Any]]


@dataclass
class _Item:
    key: str
    request: dict[str, Any]
    single: Single | None
    answer: asyncio.Future[Any]


class Batcher(Generic[M]):
    """The callers of one bulk route on one client (see the module's docstring)."""

    def __init__(
        self,
        client: ServiceClient,
        path: str,
        into: type[M],
        *,
        max_items: int = MAX_ITEMS,
        in_flight: int = 2,
    ) -> None:
        self._client = client
        self._path = path
        self._into = into
        self._max_items = max_items
        self._in_flight = in_flight
        self._waiting: list[_Item] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._no_bulk_route = False
        self.requests = 0  # bulk requests sent (a bench divides items by it)
        self.items = 0

    async def call(self, key: str, request: dict[str, Any], single: Single | None = None) -> M:
        """The item's answer, as the single route would give it; ``request`` is its body as the
        single route takes it (wire form), ``single`` that call itself (the fallback)."""
        if self._no_bulk_route and single is not None:
            return self._read(await single())
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Item(key, request, single, answer))
        if len(self._waiting) == 1 and len(self._sending) < self._in_flight:
            # Sent on the loop's next turn: the callers woken by the same event join it.
            asyncio.get_running_loop().call_soon(self._send_waiting)
        return self._read(await answer)

    def _read(self, value: Any) -> M:
        return value if isinstance(value, self._into) else self._into.model_validate(value)

    def _send_waiting(self) -> None:
        while self._waiting and len(self._sending) < self._in_flight:
            batch, self._waiting = self._waiting[: self._max_items], self._waiting[self._max_items :]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._waiting:
            self._send_waiting()

    async def _send(self, batch: list[_Item]) -> None:
        try:
            await self._send_unguarded(batch)
        except asyncio.CancelledError:  # this sender was stopped: nobody knows what the service did
            for item in batch:
                _fail(item, Ambiguous(self._client.service, f"POST {self._path} was cancelled"))
            raise
        except BaseException as exc:  # the callers' own, raised in each as the single call would
            for item in batch:
                _fail(item, exc)

    async def _send_unguarded(self, batch: list[_Item]) -> None:
        service, what = self._client.service, f"POST {self._path}"
        self.requests += 1
        self.items += len(batch)
        body = {"items": [{"key": item.key, "request": item.request} for item in batch]}
        try:
            bulk = await self._client.fetch(BulkAnswer, "POST", self._path, json=body)
        except Refused as exc:
            if exc.status in (404, 405) and all(item.single is not None for item in batch):
                self._no_bulk_route = True  # an older service: each item on its single route
                await asyncio.gather(*(self._one_by_one(item) for item in batch))
                return
            raise
        if [a.key for a in bulk.items] != [item.key for item in batch]:
            raise Ambiguous(service, f"contract-violation: {what} answered items out of order or missing")
        for item, got in zip(batch, bulk.items, strict=True):
            if 200 <= got.status < 300:
                try:
                    _answer(item, self._into.model_validate(got.body))
                except ValidationError as exc:
                    _fail(
                        item, Ambiguous(service, f"contract-violation: {what} item {item.key}: {exc}"[:500])
                    )
            else:
                _fail(item, judge(service, f"{what} item {item.key}", got.status, got.body))

    async def _one_by_one(self, item: _Item) -> None:
        assert item.single is not None
        try:
            _answer(item, await item.single())
        except Exception as exc:
            _fail(item, exc)


def _answer(item: _Item, value: Any) -> None:
    if not item.answer.done():  # its caller may have been cancelled meanwhile
        item.answer.set_result(value)


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.answer.done():
        item.answer.set_exception(exc)
