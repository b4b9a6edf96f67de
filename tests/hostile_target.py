"""A hostile HTTP target on loopback port 0, for the tests that no secret leaves through execution results: it
answers what a library would put into an exception, echoing what the request brought (the request line with the
query as sent, the headers). Raw asyncio, because a well-behaved server cannot send a malformed response.

- ``/malformed…``: ``HTTP/1.1 abc <the request line>`` (not a status line);
- ``/bad-chunk…``: a 200 whose chunked body is the request line instead of a chunk size;
- ``/redirect-host?v=…``: a redirect to ``http://<v as received>.invalid/`` (a host that does not resolve);
- ``/redirect-away?…``: a redirect to port 1 of this host (refused) with the query as received;
- anything else: a 500 page echoing the request line and headers.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["HostileTarget"]


class HostileTarget:
    def __init__(self) -> None:
        self.port = 0
        self.request_lines: list[str] = []
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> HostileTarget:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            request_line = (await reader.readline()).decode("latin-1").strip()
            headers = []
            while (line := await reader.readline()) not in (b"\r\n", b""):
                headers.append(line.decode("latin-1").strip())
            self.request_lines.append(request_line)
            writer.write(self._answer(request_line, headers).encode("latin-1"))
            await writer.drain()
        writer.close()

    def _answer(self, request_line: str, headers: list[str]) -> str:
        target = request_line.split(" ")[1] if request_line.count(" ") >= 2 else "/"
        path, _, query = target.partition("?")
        if path.startswith("/malformed"):
            return f"HTTP/1.1 abc {request_line}\r\n\r\n"
        if path.startswith("/bad-chunk"):
            return f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{request_line}\r\n"
        if path.startswith("/redirect-host"):
            value = query.partition("v=")[2]
            return f"HTTP/1.1 302 Found\r\nLocation: http://{value}.invalid/\r\nContent-Length: 0\r\n\r\n"
        if path.startswith("/redirect-away"):
            return f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/?{query}\r\nContent-Length: 0\r\n\r\n"
        page = "\n".join([f"<p>you asked for {request_line}</p>", *(f"<p>{h}</p>" for h in headers)])
        return f"HTTP/1.1 500 Oops\r\nContent-Type: text/html\r\nContent-Length: {len(page)}\r\n\r\n{page}"
