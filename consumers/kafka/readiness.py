"""Waiting for the broker at start, and telling "not up yet" from "will never let us in".

A compose stack or an orchestrator starts the service and the broker together; the
broker takes seconds to tens of seconds to answer. :func:`when_ready` runs a start-up
step (creating the topics, say) once a broker answers, retrying with exponential
backoff while none does, and gives up after ``wait_s`` with
:class:`~fusionstream.consumers.producers.errors.BrokerUnavailable`.

Before each try it opens one connection of its own (TCP, TLS, SASL, a metadata
request): aiokafka's clients fold every bootstrap failure into "Unable to bootstrap",
logged at ERROR, while the connection itself says which it was. A refused SASL
authentication or an untrusted certificate is not going to change by waiting: it
raises :class:`~fusionstream.consumers.kafka.errors.BrokerAuthError` at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from fusionstream.consumers.kafka.errors import BrokerAuthError, BrokerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest one probe may take: a blackholed address would otherwise hold a try for aiokafka's 40 s.
PROBE_TIMEOUT_S = 10.0
_SASL_REFUSED = (SaslAuthenticationFailed, AuthenticationFailedError)
#: The listener does not speak the configured SASL (a PLAINTEXT port answers a handshake like this).
_SASL_MISMATCH = (IllegalSaslStateError, UnsupportedSaslMechanismError)


@dataclass(frozen=True)
class Backoff:
    """Delays between tries: ``first_s``, doubling, never above ``max_s``."""

    first_s: float = 0.5
    max_s: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


class _NotReady(Exception):
    """One try failed in a way that waiting may mend."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(reason)
        self.what, self.reason = what, reason


async def when_ready(
    step: Callable[[], Awaitable[T]],
    *,
    bootstrap: str,
    security: Mapping[str, Any] | None = None,
    wait_s: float,
    backoff: Backoff = Backoff(),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """``await step()`` once a broker at ``bootstrap`` answers; retry while none does, for up to ``wait_s``.

    Logs one WARNING per failed try. ``step`` failing with a connection error or another
    retriable Kafka error counts as "not ready" too (the broker's port can open a moment
    before it serves requests); any other error of ``step`` propagates at once.
    """
    deadline = clock() + wait_s
    for attempt, delay in enumerate(backoff.delays(), start=1):
        try:
            await _probe(bootstrap, security, max(min(deadline - clock(), PROBE_TIMEOUT_S), 1.0))
            try:
                return await step()
            except (KafkaError, OSError) as exc:
                if isinstance(exc, KafkaError) and not exc.retriable:
                    raise
                raise _NotReady("ready", _reason(exc)) from exc
        except _NotReady as failed:
            remaining = deadline - clock()
            if remaining <= 0:
                tries = "1 try" if attempt == 1 else f"{attempt} tries"
                raise BrokerUnavailable(
                    bootstrap,
                    f"not {failed.what} after {wait_s:g} s ({tries}; last: {failed.reason}); "
                    "FUSIONSTREAM_BROKER_WAIT_S sets how long to wait",
                ) from None
            delay = min(delay, remaining)
            log.warning("broker %s not %s yet (attempt %d, retrying in %.1f s; giving up after %g s): %s",
                        bootstrap, failed.what, attempt, delay, wait_s, failed.reason)
            await sleep(delay)
    raise AssertionError("unreachable")  # the delays never end


async def _probe(bootstrap: str, security: Mapping[str, Any] | None, timeout_s: float) -> None:
    """Return once one bootstrap server answers a metadata request; raise :class:`_NotReady` if none does."""
    options = dict(security or {})
    reasons: list[str] = []
    for host, port, _ in collect_hosts(bootstrap, randomize=False):
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **options), timeout_s
            )
            try:
                await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
            finally:
                conn.close()
            return
        except _SASL_REFUSED as exc:
            raise BrokerAuthError(
                f"the broker at {host}:{port} refused SASL authentication as {options.get('sasl_plain_username')!r} "
                f"({_reason(exc)}): check FUSIONSTREAM_SASL_USERNAME and FUSIONSTREAM_SASL_PASSWORD"
            ) from None
        except _SASL_MISMATCH as exc:
            raise BrokerAuthError(
                f"the broker at {host}:{port} does not accept {options.get('security_protocol')} with SASL mechanism "
                f"{options.get('sasl_mechanism')} ({type(exc).__name__}): check FUSIONSTREAM_SECURITY_PROTOCOL and "
                "FUSIONSTREAM_SASL_MECHANISM against the broker's listener"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise BrokerAuthError(
                f"the broker at {host}:{port} has a certificate this client does not trust ({_reason(exc)}): "
                f"{_certificate_hint(exc)}"
            ) from None
        except (OSError, TimeoutError, KafkaError) as exc:
            reasons.append((f"{host}:{port}", _reason(exc) + _protocol_hint(exc, options.get("security_protocol"))))
    if len(reasons) == 1:
        raise _NotReady("reachable", reasons[0][1])
    raise _NotReady("reachable", "; ".join(f"{where}: {why}" for where, why in reasons) or "no bootstrap server")


def _certificate_hint(exc: ssl.SSLCertVerificationError) -> str:
    """What to check for a refused certificate: the CA file is not always the cause."""
    why = (exc.verify_message or "").lower()
    if "expired" in why or "not yet valid" in why:
        return "the broker's certificate is outside its validity dates: renew it (or check this machine's clock)"
    if "mismatch" in why or "hostname" in why:
        return ("the broker's certificate does not name the host this client connects to: use a host name it lists "
                "in FUSIONSTREAM_BOOTSTRAP_SERVERS (and in the broker's advertised.listeners)")
    return "check FUSIONSTREAM_SSL_CAFILE (the CA that signed the broker's certificate)"


def _protocol_hint(exc: BaseException, protocol: str | None) -> str:
    """A connection the listener closed or a handshake it did not speak: most often a protocol that is not the
    listener's (a plaintext client on a TLS or SASL listener, TLS on a plaintext one), said as unreachable."""
    text = str(exc).lower()
    if isinstance(exc, ssl.SSLError | ConnectionResetError) or "wrong version number" in text or (
            "closed" in text and "connection" in text):
        return (f" (this client speaks {protocol or 'PLAINTEXT'}: if the listener at that port is another protocol, "
                "set FUSIONSTREAM_SECURITY_PROTOCOL to its own)")
    return ""


def _reason(exc: BaseException) -> str:
    """The cause in a few words, on one line."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer (timed out)"
    return " ".join(str(exc).split()) or type(exc).__name__


#: The keyword arguments of a client's that say how to connect (what one probe needs of them).
_CONNECTION_KEYS = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username",
                    "sasl_plain_password")


async def unreachable(bootstrap: str, client_options: Mapping[str, Any] | None, reason: str,
                      timeout_s: float = 3.0, hint: str | None = None) -> Exception:
    """The error to raise for a client that could not connect: the broker's own refusal (SASL, TLS) when
    one probe shows it (aiokafka's clients say only that they could not connect), else
    :class:`BrokerUnavailable` with ``reason`` (and ``hint``, what to do, when given). The probe is short: the
    client has waited already."""
    options = {k: v for k, v in (client_options or {}).items() if k in _CONNECTION_KEYS}
    try:
        await _probe(bootstrap, options, timeout_s)
    except BrokerAuthError as exc:
        return exc
    except _NotReady as failed:
        if "FUSIONSTREAM_SECURITY_PROTOCOL" in failed.reason:  # the probe saw why: a protocol not the listener's
            reason = failed.reason
    return BrokerUnavailable(bootstrap, reason) if hint is None else BrokerUnavailable(bootstrap, reason, hint)


__all__ = ["Backoff", "unreachable", "when_ready"]
