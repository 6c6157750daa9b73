"""Calling a service: the one HTTP client the operator, the workers and Main API use.

Every failure is sorted into what the caller must do next:

    ServiceError
    ├── Ambiguous        the outcome is unknown (timeout, connection reset, 5xx but 501/507, 429,
    │                    409 idempotency-key-in-progress): retry the *same* request with the
    │                    *same* Idempotency-Key; ``retry_after`` carries the server's Retry-After
    └── Refused          the service answered a definite no (4xx): ``status``, ``kind`` (the
                         problem type's slug) and ``detail`` say why; retrying will not help

Low-level httpx errors are translated here, the original chained as the cause.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel

from aijobs.wire.tokens import TokenSigner

if TYPE_CHECKING:
    from aijobs.wire.bulk import Batcher

__all__ = ["IN_PROGRESS", "Ambiguous", "Refused", "ServiceClient", "ServiceError", "judge"]

M = TypeVar("M", bound=BaseModel)

# Problem types that mean "ask again later", whatever their 4xx status says.
IN_PROGRESS = frozenset({"idempotency-key-in-progress"})


class ServiceError(Exception):
    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


class Ambiguous(ServiceError):
    def __init__(self, service: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(service, message)
        self.retry_after = retry_after


class Refused(ServiceError):
    def __init__(self, service: str, status: int, kind: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(service, f"{status} {kind}: {detail}")
        self.status = status
        self.kind = kind
        self.detail = detail
        self.body = body


def judge(service: str, what: str, status: int, body: Any, retry_after: float | None = None) -> ServiceError:
    """What a non-2xx answer means for the caller: unknown (retry the same request) or a no.
    507 (storage full) and 501 are definite answers: retrying the same call won't change them;
    a key still in progress is not a no, whatever its 4xx says."""
    if (status >= 500 and status not in (501, 507)) or status == 429:
        return Ambiguous(service, f"{what} answered {status}", retry_after)
    if not isinstance(body, dict):
        body = {"detail": str(body)[:500]}
    slug = str(body.get("type", "")).rsplit("/", 1)[-1] or f"http-{status}"
    if slug in IN_PROGRESS:
        return Ambiguous(service, f"{what}: {slug}", retry_after)
    return Refused(service, status, slug, str(body.get("detail", "")), body)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class ServiceClient:
    """An async client for one service, authenticated as one identity."""

    def __init__(
        self,
        service: str,
        base_url: str,
        signer: TokenSigner,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.service = service
        self._signer = signer
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        self._batchers: dict[str, Batcher[Any]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        data: dict[str, str] | None = None,
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request; ``data`` and ``files`` send a ``multipart/form-data`` body (form fields
        and file parts as ``(field, (filename, bytes, content type))``), rendered whole before it
        is sent: httpx streams a form part by part (a boundary, headers, the bytes and a line
        break for each file), and every piece is a write to the socket with a timeout of its own,
        four for each of a worker's bulk upload's results (bench/batch.py). The parts are in
        memory already, so the body as one piece costs one copy of them."""
        all_headers = {"Authorization": f"Bearer {self._signer.token_for(self.service)}", **(headers or {})}
        if key is not None:
            all_headers["Idempotency-Key"] = key
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            if files is not None:
                extra.update(data=data, files=files)
            request = self._http.build_request(
                method, path, json=json, params=params, content=content, headers=all_headers, **extra
            )
            request.read()  # the body as one piece (see above); a body of bytes or JSON is one already
            response = await self._http.send(request)
        except httpx.TimeoutException as exc:
            raise Ambiguous(self.service, f"{method} {path} timed out") from exc
        except httpx.TransportError as exc:
            raise Ambiguous(self.service, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:500]}
            raise judge(self.service, f"{method} {path}", response.status_code, body, _retry_after(response))
        return response

    def bulk(self, path: str, into: type[M]) -> Batcher[M]:
        """The batcher of a bulk route (:mod:`aijobs.wire.bulk`), one per route and client, so
        that every job calling it at once shares its requests."""
        from aijobs.wire.bulk import Batcher  # it builds on this module

        batcher = self._batchers.get(path)
        if batcher is None:
            batcher = self._batchers[path] = Batcher(self, path, into)
        return batcher

    async def fetch(self, into: type[M], method: str, path: str, **kwargs: Any) -> M:
        """Call, and read the answer as the wire model ``into`` (:mod:`aijobs.api`).

        A 2xx whose body does not fit the model means the service did *something* we cannot
        read: the outcome is unknown (:class:`Ambiguous`), never a definite no, because a no
        would compensate a call that may have committed (a capture that went through)."""
        response = await self.call(method, path, **kwargs)
        try:
            return into.model_validate_json(response.content)
        except ValueError as exc:
            raise Ambiguous(
                self.service,
                f"contract-violation: {method} {path} answered {response.status_code} with a body "
                f"that is not a {into.__name__}: {exc}"[:500],
            ) from exc
