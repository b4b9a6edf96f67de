"""One HTTP request of an execution as it goes out: the URL, headers and body with the credentials' values already
substituted, so its repr shows none of them."""

from __future__ import annotations

import contextlib
import dataclasses
import ssl

import aiohttp

__all__ = ["OutgoingRequest"]


@dataclasses.dataclass(frozen=True, repr=False)
class OutgoingRequest:
    method: str
    url: str  # substituted: may hold a value
    headers: list[tuple[str, str]]  # substituted
    data: bytes | None  # substituted
    allow_redirects: bool
    max_redirects: int
    tls: ssl.SSLContext
    timeout: aiohttp.ClientTimeout

    def send(
        self,
        session: aiohttp.ClientSession,
        *,
        authorization: str = "",
        allow_redirects: bool | None = None,
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The request on ``session``, with an ``Authorization`` header added if given, and redirects followed as
        the request says unless ``allow_redirects`` overrides it."""
        headers = [*self.headers, ("Authorization", authorization)] if authorization else self.headers
        return session.request(
            self.method,
            self.url,
            headers=headers,
            data=self.data,
            allow_redirects=self.allow_redirects if allow_redirects is None else allow_redirects,
            max_redirects=self.max_redirects,
            ssl=self.tls,
            timeout=self.timeout,
        )

    def __repr__(self) -> str:
        return f"OutgoingRequest({self.method}, redacted)"
