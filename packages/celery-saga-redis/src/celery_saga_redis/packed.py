"""The hot script calls, packed here: `PackedScript`.

The store's step writes, creates and saga updates are each one EVALSHA; a step write
has some twenty to forty arguments. redis-py packs a
command argument by argument (type checks, encoding, buffer splitting), which for these
calls costs the worker about as much CPU as the rest of the round trip. Here the call is
encoded with one join and sent on a connection of the client's own pool, then its reply
is read by the connection's parser, as redis-py would.

Only on a standalone client with a pool (not a cluster, not a single-connection
client). Anything but a reply or an error reply (NOSCRIPT, a lost connection, a time
out) goes through redis-py's own call instead: it loads the script, and retries as the
client is configured to. Commands sent this way bypass redis-py's instrumentation hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.commands.core import Script
from redis.connection import Encoder  # type: ignore[attr-defined]  # redis-py's own encoder

__all__ = ["PackedScript", "pack"]


def pack(parts: Sequence[bytes]) -> bytes:
    """`parts` as one RESP array of bulk strings (a command as it goes on the wire)."""
    bulks = b"".join([b"$%d\r\n%b\r\n" % (len(part), part) for part in parts])
    return b"*%d\r\n%b" % (len(parts), bulks)


class PackedScript:
    """Call `script` (registered on `client`) by EVALSHA, packed in one go (see above)."""

    def __init__(self, client: Any, script: Script) -> None:
        self.client = client
        self.script = script
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        #: redis-py's own encoder, as its connections make it (what every argument goes through).
        self._encoder: Any = cast(Any, Encoder)(
            kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"), False
        )
        self._utf8 = self._encoder.encoding == "utf-8" and self._encoder.encoding_errors == "strict"
        # redis-py before 5.3 wants the command's name (later ones warn when given it).
        first = next(iter(inspect.signature(pool.get_connection).parameters.values()), None)
        self._name_args: tuple[str, ...] = (
            ("EVALSHA",) if first is not None and first.default is inspect.Parameter.empty else ()
        )
        self._head = [b"EVALSHA", script.sha.encode()]

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> bytes:
        """The EVALSHA of `keys` and `args` as it goes on the wire."""
        encode = self._encoder.encode
        parts = [*self._head, b"%d" % len(keys)]
        if self._utf8:  # most arguments are str: encoded here, without a call per argument
            parts += [v.encode() if type(v) is str else encode(v) for v in (*keys, *args)]
        else:
            parts += [encode(v) for v in (*keys, *args)]
        return pack(parts)

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply, as ``script(keys=keys, args=args)`` returns it."""
        client = self.client
        if getattr(client, "connection", None) is not None:  # a single-connection client
            return self.script(keys=keys, args=args, client=client)
        command = self.command(keys, args)
        pool = client.connection_pool
        conn = pool.get_connection(*self._name_args)
        try:
            conn.send_packed_command([command])
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            pass  # redis-py's call below loads the script and runs it
        except redis.ResponseError:
            raise  # an error reply: the connection is fine
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()  # redis-py's call below retries as the client is configured
        except BaseException:
            conn.disconnect()  # interrupted mid-exchange: the connection's state is unknown
            raise
        finally:
            pool.release(conn)
        return self.script(keys=keys, args=args, client=client)
