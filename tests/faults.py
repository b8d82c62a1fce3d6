"""A fault-injection TCP proxy for the tests: put it between workers and a server.

`FaultProxy(port)` listens on a free local port of its own and forwards every
connection to ``127.0.0.1:port``. A test can then

- `cut()`: drop every open connection and refuse new ones (a server or network outage);
- `black_hole()`: keep connections open but pass no bytes either way (a frozen server,
  a silent network partition: clients hang until their own timeouts);
- `delay(seconds)`: hold each chunk of data that long before passing it on;
- `heal()`: back to forwarding.

It only ever connects to the loopback address, and stops with `close()` (or as a
context manager). Nothing here sleeps to synchronise a test: state changes apply
to the next byte that crosses the proxy.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from types import TracebackType

_CHUNK = 65536


class FaultProxy:
    """A TCP proxy to ``127.0.0.1:target_port`` whose connections a test can break."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        if target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to this machine's loopback address")
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._mode = "forward"
        self._delay = 0.0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- what a test does -------------------------------------------------------------------
    def cut(self) -> None:
        """Close every connection now and refuse new ones until `heal()`."""
        with self._lock:
            self._mode = "cut"
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _close(*pair)

    def black_hole(self) -> None:
        """Accept and hold connections, but pass no data, until `heal()`."""
        with self._lock:
            self._mode = "black_hole"

    def delay(self, seconds: float) -> None:
        """Pass data on, each chunk `seconds` late."""
        with self._lock:
            self._mode, self._delay = "forward", seconds

    def heal(self) -> None:
        """Forward everything again, at once."""
        with self._lock:
            self._mode, self._delay = "forward", 0.0

    @property
    def mode(self) -> str:
        """``forward``, ``cut`` or ``black_hole``."""
        with self._lock:
            return self._mode

    def url(self, scheme: str, rest: str = "") -> str:
        """A URL through the proxy, e.g. ``url("redis", "/12")``."""
        return f"{scheme}://127.0.0.1:{self.port}{rest}"

    def close(self) -> None:
        """Stop the proxy and close every connection."""
        self._closed.set()
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the proxy ------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode == "cut":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            threading.Thread(
                target=self._pump, args=(client, upstream), name="fault-proxy-pump", daemon=True
            ).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            for sock in peer:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
            while not self._closed.is_set():
                mode = self.mode
                if mode == "cut":
                    break
                if mode == "black_hole":
                    time.sleep(0.02)  # hold the bytes: nothing crosses while black-holed
                    continue
                events = sel.select(timeout=0.1)
                try:
                    for key, _ in events:
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(_CHUNK)
                        if not data:
                            _close(client, upstream)
                            return
                        with self._lock:
                            wait = self._delay
                        if wait:
                            time.sleep(wait)
                        peer[sock].setblocking(True)
                        peer[sock].sendall(data)
                        peer[sock].setblocking(False)
                except OSError:
                    break
        _close(client, upstream)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass
