"""The NATS sink's credentials and TLS against a real nats-server that requires each of them.

Every way to authenticate (token, user and password, NKey, a `.creds` file in operator mode)
and TLS with a private CA, one-way and mutual, is shown publishing a round to a consumer of the
same server; a credential or certificate the server refuses keeps the sink retrying, its rounds
counted `disconnected` and the refusal logged without the secret. The certificates, keys and
JWTs are made here, for each test.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from publish_rig import NatsServer, Rounds, make_config, until
from structlog.testing import capture_logs

from oracled.config import NatsConfig, config_warnings
from oracled.errors import ConfigError
from oracled.publish.nats import NatsSink
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "33" * 32)
SAFETY_S = 15.0  # guards against hangs only
TOKEN = "t0ken-" + "a" * 26
PASSWORD = "pa55-" + "b" * 27
FIRST: dict[str, Any] = {"tls_handshake_first": True}  # TLS before the server's greeting


# -- the rig ---------------------------------------------------------------------------------------


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a nats-server with extra config lines; every one started is stopped at the end."""
    started: list[NatsServer] = []

    async def _start(settings: str, scheme: str = "nats") -> NatsServer:
        srv = NatsServer(tmp_path / f"nats{len(started)}", jetstream=False, settings=settings)
        srv.url = f"{scheme}://127.0.0.1:{srv.port}"
        started.append(srv)
        await srv.start()
        return srv

    yield _start
    for srv in started:
        srv.stop()


async def publishes(sink: NatsSink, url: str, **consumer: Any) -> None:
    """The sink connects and a round it is given reaches a consumer of the same server."""
    task = asyncio.create_task(sink.run())
    nc = await nats.connect(url, allow_reconnect=False, **consumer)
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def keep(msg: Any) -> None:
            got.put_nowait(msg.data)

        await nc.subscribe("oracled.rounds", cb=keep)
        await nc.flush()
        await until(lambda: sink.ready.is_set(), "the sink connected")
        signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
        async with asyncio.timeout(SAFETY_S):
            while got.empty():  # a round published before the SUB landed reaches nobody: again
                sink.submit(signed)
                await asyncio.sleep(0.1)
        assert json.loads(await got.get())["root"] == "0x" + signed.root.hex()
        assert sink.stats.connected and sink.stats.published >= 4
        assert sink.stats.unpublished == {
            "disconnected": 0,
            "queue_full": 0,
            "error": 0,
            "unsigned": 0,
        }
    finally:
        await nc.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def refused(cfg: NatsConfig, env: dict[str, str], event: str, *secrets: str) -> None:
    """The sink keeps trying (at least twice, logged as `event`), never connects, counts the
    rounds it is given as `disconnected` and each attempt as a connect failure of the event's
    reason (`credentials` or `tls`, never `unreachable`: the server answered), and no log line
    holds any of `secrets`."""
    reason = "tls" if "TLS" in event else "credentials"
    with capture_logs() as logs:
        sink = NatsSink(cfg, env=env, connect_timeout_s=1.0, refusal_log_every_s=0.0)
        task = asyncio.create_task(sink.run())
        try:
            await until(lambda: sum(e["event"] == event for e in logs) >= 2, f"two {event!r}")
            rounds = Rounds(make_config())
            sink.submit(rounds.step())
            sink.submit(rounds.step())
            assert not sink.stats.connected and not sink.ready.is_set()
            assert sink.stats.unpublished["disconnected"] == 2 * 4  # 3 markets + the round
            assert sink.stats.published == 0
            failures = sink.stats.connect_failures
            assert failures[reason] >= 2, failures
            assert sum(failures.values()) == failures[reason], failures
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert not task.done() or task.cancelled()  # it was still retrying, not dead
    text = repr(logs)
    for secret in secrets:
        assert secret not in text


def secret_file(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _nkey(prefix: int) -> tuple[Any, str, str]:
    """A new key pair: (pair, seed, public key)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return pair, seed.decode(), pair.public_key.decode()


def _jwt(signer: Any, issuer: str, subject: str, claims: dict[str, Any], **extra: int) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = {"jti": _b64(os.urandom(16)), "iat": int(time.time()), "iss": issuer, **extra}
    body |= {"name": subject[:8], "sub": subject, "nats": claims}
    payload = _b64(json.dumps(body).encode())
    return f"{header}.{payload}.{_b64(signer.sign(f'{header}.{payload}'.encode()))}"


def operator_mode(**user_claims: int) -> tuple[str, str]:
    """A server config trusting a new operator with one account, and a user's `.creds` text
    (`user_claims`: more registered claims of the user's JWT, such as `exp`)."""
    op, _, op_pub = _nkey(nkeys.PREFIX_BYTE_OPERATOR)
    acc, _, acc_pub = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    _, user_seed, user_pub = _nkey(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1}
    unlimited |= {"wildcards": True, "conn": -1, "leaf": -1}
    account = {"type": "account", "version": 2, "limits": unlimited}
    user = {
        "type": "user",
        "version": 2,
        "pub": {},
        "sub": {},
        "subs": -1,
        "data": -1,
        "payload": -1,
    }
    settings = (
        f'operator: "{_jwt(op, op_pub, op_pub, {"type": "operator", "version": 2})}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {acc_pub}: "{_jwt(op, op_pub, acc_pub, account)}" }}'
    )
    creds = (
        f"-----BEGIN NATS USER JWT-----\n{_jwt(acc, acc_pub, user_pub, user, **user_claims)}\n"
        "------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n"
    )
    return settings, creds


class Pki:
    """A private CA with a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        ca = (
            self._builder(ca_name, ca_name, ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self._leaf(
            "server", ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH
        )
        self.client_cert, self.client_key = self._leaf(
            "client", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH
        )

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def _leaf(self, name: str, ca: x509.Certificate, ca_key: Any, usage: Any) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            self._builder(subject, ca.subject, key)
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key_path = self._write(f"{name}.key", key_pem)
        os.chmod(key_path, 0o600)
        return self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)), key_path

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def server_settings(self, *, verify: bool) -> str:
        lines = [
            f'cert_file: "{self.server_cert}"',
            f'key_file: "{self.server_key}"',
            f'ca_file: "{self.ca}"',
            f"verify: {'true' if verify else 'false'}",
            "timeout: 2",
            "handshake_first: true",
        ]
        return "tls {\n  " + "\n  ".join(lines) + "\n}"

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


# -- each way to authenticate ----------------------------------------------------------------------


async def test_a_token_from_the_environment(start: Callable[..., Any]) -> None:
    """token_env: the sink authenticates with the token its variable holds; a wrong token is
    refused by the server, logged at error level without the token, and retried."""
    srv = await start(f'authorization {{ token: "{TOKEN}" }}')
    cfg = NatsConfig(enabled=True, servers=(srv.url,), token_env="NATS_TOKEN")
    sink = NatsSink(cfg, env={"NATS_TOKEN": TOKEN + "\n"})
    assert sink.describe()["auth"] == "token" and TOKEN not in repr(sink.describe())
    await publishes(sink, srv.url, token=TOKEN)
    wrong = "x" * 32
    await refused(cfg, {"NATS_TOKEN": wrong}, "nats credentials refused; retrying", wrong, TOKEN)


async def test_a_user_and_password(start: Callable[..., Any]) -> None:
    """user + password_env: the sink logs in as the user; a wrong password is refused, retried."""
    srv = await start(
        f'authorization {{ users = [ {{ user: oracled, password: "{PASSWORD}" }} ] }}'
    )
    cfg = NatsConfig(enabled=True, servers=(srv.url,), user="oracled", password_env="NATS_PASS")
    await publishes(
        NatsSink(cfg, env={"NATS_PASS": PASSWORD}), srv.url, user="oracled", password=PASSWORD
    )
    wrong = "y" * 32
    await refused(cfg, {"NATS_PASS": wrong}, "nats credentials refused; retrying", wrong)


async def test_an_nkey_seed_file(start: Callable[..., Any], tmp_path: Path) -> None:
    """nkey_seed_file (mode 600): the sink signs the server's nonce with the user's seed; a seed
    the server does not know is refused and retried, and the seed is never logged."""
    _, seed, public = _nkey(nkeys.PREFIX_BYTE_USER)
    srv = await start(f"authorization {{ users = [ {{ nkey: {public} }} ] }}")
    path = secret_file(tmp_path / "oracled.nk", seed + "\n")
    cfg = NatsConfig(enabled=True, servers=(srv.url,), nkey_seed_file=path)
    assert NatsSink(cfg).describe()["auth"] == "nkey"
    await publishes(NatsSink(cfg), srv.url, nkeys_seed_str=seed)
    _, other, _ = _nkey(nkeys.PREFIX_BYTE_USER)
    env = {"NATS_NKEY": other}
    by_env = NatsConfig(enabled=True, servers=(srv.url,), nkey_seed_env="NATS_NKEY")
    await refused(by_env, env, "nats credentials refused; retrying", other, seed)


async def test_a_creds_file_in_operator_mode(start: Callable[..., Any], tmp_path: Path) -> None:
    """creds_file: a server trusting an operator accepts the user JWT and seed of a `.creds`
    file; the same text from creds_env works too."""
    settings, creds = operator_mode()
    srv = await start(settings)
    path = secret_file(tmp_path / "oracled.creds", creds, 0o400)
    cfg = NatsConfig(enabled=True, servers=(srv.url,), creds_file=path)
    assert NatsSink(cfg).describe()["auth"] == "creds"
    await publishes(NatsSink(cfg), srv.url, user_credentials=path)
    by_env = NatsConfig(enabled=True, servers=(srv.url,), creds_env="NATS_CREDS")
    await publishes(NatsSink(by_env, env={"NATS_CREDS": creds}), srv.url, user_credentials=path)


async def test_expired_creds_are_refused_as_credentials(
    start: Callable[..., Any], tmp_path: Path
) -> None:
    """A `.creds` file whose user JWT expired an hour ago: the server refuses it, and the sink
    counts and logs a refused credential, as for a wrong one, not an unreachable server."""
    settings, creds = operator_mode(exp=int(time.time()) - 3600)
    srv = await start(settings)
    path = secret_file(tmp_path / "expired.creds", creds)
    cfg = NatsConfig(enabled=True, servers=(srv.url,), creds_file=path)
    await refused(cfg, {}, "nats credentials refused; retrying")


async def test_a_stopped_server_counts_as_unreachable_not_refused(
    start: Callable[..., Any],
) -> None:
    """The same sink, its token accepted, then its server stopped: the attempts to reconnect
    count as `unreachable`, and not one as a refused credential or TLS, so an operator can
    tell a server that is down from one that turns the sink away."""
    srv = await start(f'authorization {{ token: "{TOKEN}" }}')
    cfg = NatsConfig(enabled=True, servers=(srv.url,), token_env="NATS_TOKEN")
    sink = NatsSink(cfg, env={"NATS_TOKEN": TOKEN}, connect_timeout_s=1.0)
    task = asyncio.create_task(sink.run())
    try:
        await until(lambda: sink.stats.connected, "connected with the right token")
        assert sink.stats.connect_failures == {
            "credentials": 0,
            "tls": 0,
            "unreachable": 0,
            "server_error": 0,
        }
        srv.stop()
        await until(lambda: sink.stats.connect_failures["unreachable"] >= 2, "two attempts")
        assert not sink.stats.connected
        assert sink.stats.connect_failures["credentials"] == 0
        assert sink.stats.connect_failures["tls"] == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_credential_revoked_while_connected_is_retried_until_let_in_again(
    start: Callable[..., Any],
) -> None:
    """The server's config reloaded without the sink's token while the sink is connected: the
    server closes the connection with `Authorization Violation`, and nats-py gives such a client
    up for good (it reconnects after an outage, never after an error from the server). The sink
    connects again by itself, counting and logging the refusals as for any refused credential,
    and publishes again once the token is let in (before, it stayed closed and counted every
    round `disconnected` until the daemon was restarted, with no refusal counted or logged)."""
    srv = await start(f'authorization {{ token: "{TOKEN}" }}')
    cfg = NatsConfig(enabled=True, servers=(srv.url,), token_env="NATS_TOKEN")
    sink = NatsSink(cfg, env={"NATS_TOKEN": TOKEN}, connect_timeout_s=1.0, restart_base_s=0.1)
    task = asyncio.create_task(sink.run())
    try:
        await until(lambda: sink.stats.connected, "connected with the right token")
        with capture_logs() as logs:
            await srv.reload(f'authorization {{ token: "{"z" * 32}" }}')
            await until(lambda: sink.stats.connect_failures["credentials"] >= 2, "refusals")
            assert not sink.stats.connected
            await srv.reload(f'authorization {{ token: "{TOKEN}" }}')
            await until(lambda: sink.stats.connected, "let in again")
        errors = [e["event"] for e in logs if e["log_level"] == "error"]
        assert "nats connection closed by the server; connecting again" in errors
        assert "nats credentials refused; retrying" in errors
        assert TOKEN not in repr(logs)
        nc = await nats.connect(srv.url, allow_reconnect=False, token=TOKEN)
        sub = await nc.subscribe("oracled.rounds")
        await nc.flush()
        signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
        async with asyncio.timeout(SAFETY_S):
            while not sub.pending_msgs:  # a round published before the SUB landed: again
                sink.submit(signed)
                await asyncio.sleep(0.1)
        assert json.loads((await sub.next_msg()).data)["root"] == "0x" + signed.root.hex()
        await nc.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_no_credentials_where_the_server_requires_them(start: Callable[..., Any]) -> None:
    """A sink with no credentials for a server that requires them is refused, logged at error
    level and retried, like a wrong credential."""
    srv = await start(f'authorization {{ token: "{TOKEN}" }}')
    cfg = NatsConfig(enabled=True, servers=(srv.url,))
    await refused(cfg, {}, "nats credentials refused; retrying")


# -- TLS -------------------------------------------------------------------------------------------


async def test_tls_with_a_private_ca(start: Callable[..., Any], tmp_path: Path) -> None:
    """tls_ca_file: the sink trusts the server's private CA; without it the server's certificate
    does not verify, and the sink keeps retrying instead of publishing unverified."""
    pki = Pki(tmp_path / "pki")
    srv = await start(pki.server_settings(verify=False), scheme="tls")
    cfg = NatsConfig(enabled=True, servers=(srv.url,), tls_ca_file=pki.ca, **FIRST)
    sink = NatsSink(cfg)
    assert sink.describe()["tls"] == {"ca": pki.ca}
    await publishes(sink, srv.url, tls=ssl.create_default_context(cafile=pki.ca), **FIRST)
    untrusted = NatsConfig(enabled=True, servers=(srv.url,), **FIRST)
    await refused(untrusted, {}, "nats TLS refused; retrying")


async def test_mutual_tls(start: Callable[..., Any], tmp_path: Path) -> None:
    """tls_cert_file + tls_key_file: a server that verifies clients accepts the sink's
    certificate, and one with its token as well; without the certificate it is turned away."""
    pki = Pki(tmp_path / "pki")
    srv = await start(pki.server_settings(verify=True), scheme="tls")
    cfg = NatsConfig(
        enabled=True,
        servers=(srv.url,),
        tls_ca_file=pki.ca,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
        **FIRST,
    )
    assert NatsSink(cfg).describe()["tls"] == {"ca": pki.ca, "cert": pki.client_cert}
    await publishes(NatsSink(cfg), srv.url, tls=pki.client_context(), **FIRST)
    no_cert = NatsConfig(enabled=True, servers=(srv.url,), tls_ca_file=pki.ca, **FIRST)
    await refused(no_cert, {}, "nats TLS refused; retrying")


async def test_mutual_tls_with_a_token(start: Callable[..., Any], tmp_path: Path) -> None:
    """TLS and a way to authenticate combine: a server requiring both accepts the sink."""
    pki = Pki(tmp_path / "pki")
    settings = pki.server_settings(verify=True) + f'\nauthorization {{ token: "{TOKEN}" }}'
    srv = await start(settings, scheme="tls")
    cfg = NatsConfig(
        enabled=True,
        servers=(srv.url,),
        token_env="T",
        tls_ca_file=pki.ca,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
        **FIRST,
    )
    consumer = {"tls": pki.client_context(), "token": TOKEN, **FIRST}
    await publishes(NatsSink(cfg, env={"T": TOKEN}), srv.url, **consumer)


#: Loop turns from a refused TLS handshake (counted by the sink's `_on_error`) to the sink's
#: cancellation: the sink waited at 3 and 4 of them for the attempt it had cancelled (Python
#: 3.11.7), every time.
REFUSED_TURNS = range(10)


async def test_one_cancellation_stops_the_sink_as_it_gives_up_a_refused_tls_handshake(
    start: Callable[..., Any], tmp_path: Path
) -> None:
    """The sink, its certificate check refusing the server's, cancels its attempt to connect
    and waits for it to end before it tries again. Cancelled once (the daemon stopping) 0 to 9
    loop turns after the refusal, it stops, with no attempt after it. Before, a cancellation
    that came while it waited for that attempt reached it through the attempt, was taken for
    the attempt's own and the sink slept and tried again, for good: a daemon's stop was held by
    it until its timeout."""
    pki = Pki(tmp_path / "pki")
    srv = await start(pki.server_settings(verify=False), scheme="tls")
    untrusted = NatsConfig(enabled=True, servers=(srv.url,), **FIRST)  # no CA for its cert
    for turns in REFUSED_TURNS:
        await cancelled_after_a_refusal(untrusted, turns)


async def cancelled_after_a_refusal(cfg: NatsConfig, turns: int) -> None:
    """Start a sink, cancel it once `turns` loop turns after its first refused TLS handshake was
    counted; fail unless it stops, with no attempt after that one. A failure leaves nothing
    running."""
    sink = NatsSink(cfg, connect_timeout_s=1.0)
    failures = sink.stats.connect_failures
    with capture_logs():
        task = asyncio.create_task(sink.run())
        try:
            async with asyncio.timeout(SAFETY_S):
                while not failures["tls"]:  # noqa: ASYNC110 - the turn it is counted in
                    await asyncio.sleep(0)
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            await until(lambda: task.done() or failures["tls"] > 1, "the sink stopped")
            assert task.cancelled(), f"the sink went on after its cancellation ({turns} turns)"
            assert failures["tls"] == 1, f"after {turns} turns"
        finally:
            async with asyncio.timeout(SAFETY_S):
                while not task.done():
                    task.cancel()
                    await asyncio.wait({task}, timeout=0.1)


class Recorder:
    """A loopback TCP proxy to `port` that keeps every byte the clients send: what the server,
    or anyone on the path, reads."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.sent = bytearray()
        self.server: asyncio.Server | None = None
        self.pumps: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"tls://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for pump in list(self.pumps):
            pump.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        for task in (self._pump(reader, up_writer, self.sent), self._pump(up_reader, writer, None)):
            pump = asyncio.create_task(task)
            self.pumps.add(pump)
            pump.add_done_callback(self.pumps.discard)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bytearray | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if keep is not None:
                    keep += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


async def test_a_plain_server_gets_no_credential_and_no_price(start: Callable[..., Any]) -> None:
    """The attack nats-py allows: a server (or an interceptor) that does not ask for TLS. Plain
    nats-py, given a `tls://` URL, sends it the token in clear; the sink (TLS handshake first)
    sends nothing but a TLS hello, logs and counts the refusal, and keeps its rounds out of it."""
    srv = await start(f'authorization {{ token: "{TOKEN}" }}')
    plain = Recorder(srv.port)
    async with plain as url:  # nats-py's default, the hazard: a tls:// URL, the token in clear
        nc = await nats.connect(url, token=TOKEN, allow_reconnect=False, connect_timeout=2)
        await nc.close()
    assert b'"auth_token": "' + TOKEN.encode() in plain.sent
    recorder = Recorder(srv.port)
    async with recorder as url:
        cfg = NatsConfig(enabled=True, servers=(url,), token_env="T", **FIRST)
        await refused(cfg, {"T": TOKEN}, "nats TLS refused; retrying", TOKEN)
    assert recorder.sent.startswith(b"\x16\x03")  # a TLS handshake record: the hello
    assert TOKEN.encode() not in recorder.sent and b"CONNECT" not in recorder.sent
    assert b"PUB " not in recorder.sent


# -- what the config and the start-up refuse -------------------------------------------------------


UNSAFE = (
    "without it the sink speaks TLS only if the server's greeting asks for it, so a server or an "
    "interceptor that does not gets credentials and prices in clear; set it to true and "
    "handshake_first: true in the servers' tls block (docs/publishing.md)"
)


def problems_of(nats_table: dict[str, Any]) -> list[str]:
    try:
        make_config(nats=nats_table)
    except ConfigError as exc:
        return list(exc.problems)
    return []


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            {"token_env": "T", "user": "u", "password_env": "P"},
            "nats: token_env and user are 2 ways to authenticate; set one",
        ),
        (
            {"creds_file": "a.creds", "nkey_seed_env": "S"},
            "nats: creds_file and nkey_seed_env are 2 ways to authenticate; set one",
        ),
        (
            {"creds_file": "a.creds", "creds_env": "C"},
            "nats: set at most one of creds_file and creds_env",
        ),
        (
            {"nkey_seed_file": "a.nk", "nkey_seed_env": "S"},
            "nats: set at most one of nkey_seed_file and nkey_seed_env",
        ),
        ({"user": "u"}, "nats.password_env: required with nats.user"),
        ({"password_env": "P"}, "nats.user: required with nats.password_env"),
        (
            {"tls_cert_file": "c.pem", **FIRST},
            "nats.tls_key_file: required with nats.tls_cert_file (mutual TLS needs both)",
        ),
        (
            {"servers": ["nats://a:4222", "tls://b:4222"], "tls_ca_file": "ca.pem"},
            f"nats.tls_handshake_first: required with tls_ca_file and tls:// servers: {UNSAFE}",
        ),
        (
            {"tls_cert_file": "c.pem", "tls_key_file": "c.key", "tls_handshake_first": False},
            f"nats.tls_handshake_first: required with tls_cert_file: {UNSAFE}",
        ),
        (
            {"tls_key_file": "c.key"},
            "nats.tls_cert_file: required with nats.tls_key_file (mutual TLS needs both)",
        ),
        (
            {"servers": ["nats://u:p@127.0.0.1:4222"], "token_env": "T"},
            "nats.servers: credentials in a server URL and nats.token_env are two ways to "
            "authenticate; remove the user part of the URLs",
        ),
    ],
)
def test_conflicting_or_incomplete_settings_are_named(table: dict[str, Any], problem: str) -> None:
    """Two ways to authenticate, a secret from two places, half a pair, TLS that a plain server
    could skip: each is one problem naming its keys, whether or not the sink is enabled."""
    assert problems_of(table) == [problem]
    assert problems_of({"enabled": True, **table}) == [problem]


def test_a_password_in_a_server_url_is_warned_without_showing_it() -> None:
    """Credentials in a URL still load (configs that used them keep running) but are warned
    about, the URL shown without its user part; clean URLs are not."""
    cfg = make_config(
        nats={
            "enabled": True,
            "servers": ["nats://oracled:hunter22@10.0.0.5:4222", "nats://b:4222"],
        }
    )
    warned = [w for w in config_warnings(cfg) if w.startswith("nats.")]
    assert warned == [
        "nats.servers: nats://***@10.0.0.5:4222 carries credentials in the config file; move "
        "them to user + password_env, token_env, creds_file or nkey_seed_file (docs/config.md)"
    ]
    clean = make_config(nats={"enabled": True, "servers": ["nats://10.0.0.5:4222"]})
    assert not [w for w in config_warnings(clean) if w.startswith("nats.")]


def test_unusable_secrets_stop_the_start_naming_the_key_not_the_secret(tmp_path: Path) -> None:
    """At start: an unset variable, a key or seed file others may read, a file that holds no seed
    or creds, a missing CA: each refused as a ConfigError naming its key, never the secret."""
    _, seed, _ = _nkey(nkeys.PREFIX_BYTE_USER)
    cases: list[tuple[NatsConfig, dict[str, str], str]] = [
        (NatsConfig(token_env="NATS_TOKEN"), {}, "nats.token_env: $NATS_TOKEN is not set"),
        (
            NatsConfig(user="u", password_env="P"),
            {"P": "  \n"},
            "nats.password_env: $P is not set",
        ),
        (
            NatsConfig(nkey_seed_file=secret_file(tmp_path / "open.nk", seed, 0o644)),
            {},
            f"nats.nkey_seed_file: {tmp_path / 'open.nk'} is accessible by group or others "
            "(mode 644); chmod 600 it",
        ),
        (
            NatsConfig(nkey_seed_env="S"),
            {"S": "SUNOTASEED" + seed[10:20]},
            "nats.nkey_seed_env: does not hold a user NKey seed (SU...)",
        ),
        (
            NatsConfig(creds_env="C"),
            {"C": seed},
            "nats.creds_env: does not hold a NATS user JWT and NKey seed (a .creds file)",
        ),
        (
            NatsConfig(creds_file=str(tmp_path / "missing.creds")),
            {},
            f"nats.creds_file: cannot read {tmp_path / 'missing.creds'} (No such file or "
            "directory)",
        ),
        (
            NatsConfig(tls_ca_file=str(tmp_path / "missing.pem")),
            {},
            f"nats.tls_ca_file: cannot load {tmp_path / 'missing.pem'} (No such file or directory)",
        ),
    ]
    for cfg, env, problem in cases:
        with pytest.raises(ConfigError) as caught:
            NatsSink(cfg, env=env)
        assert caught.value.problems == [problem]
        assert seed not in problem


def test_a_client_key_others_may_read_is_refused(tmp_path: Path) -> None:
    """tls_key_file is a private key: mode 640 is refused as for every secret file."""
    pki = Pki(tmp_path / "pki")
    os.chmod(pki.client_key, 0o640)
    cfg = NatsConfig(tls_cert_file=pki.client_cert, tls_key_file=pki.client_key)
    with pytest.raises(ConfigError) as caught:
        NatsSink(cfg)
    assert caught.value.problems == [
        f"nats.tls_key_file: {pki.client_key} is accessible by group or others (mode 640); "
        "chmod 600 it"
    ]


def test_secret_and_tls_files_that_are_fifos_are_refused_without_waiting(tmp_path: Path) -> None:
    """A creds file, a CA file or a client certificate that is a FIFO nobody writes: the start
    waited on it for ever (our read of the creds, OpenSSL's of the others); each is refused at
    once, naming its key and what the path is."""
    pki = Pki(tmp_path / "pki")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o600)
    cases = [
        (NatsConfig(creds_file=str(fifo)), f"nats.creds_file: {fifo} is a FIFO, not a file"),
        (
            NatsConfig(tls_ca_file=str(fifo)),
            f"nats.tls_ca_file: cannot load {fifo} (a FIFO, not a regular file)",
        ),
        (
            NatsConfig(tls_cert_file=str(fifo), tls_key_file=pki.client_key),
            f"nats.tls_cert_file: cannot load {fifo} with {pki.client_key} (a FIFO, not a "
            "regular file)",
        ),
        (
            NatsConfig(tls_cert_file=pki.client_cert, tls_key_file=str(fifo)),
            f"nats.tls_key_file: {fifo} is a FIFO, not a file",
        ),
    ]
    for cfg, problem in cases:
        with pytest.raises(ConfigError) as caught:
            NatsSink(cfg)
        assert caught.value.problems == [problem]
