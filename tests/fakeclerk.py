"""A real HTTP server that plays Clerk's Backend API in tests.

Tests talk to it over a socket exactly as production talks to Clerk, so the
client's timeouts, status handling and JSON parsing are exercised for real
instead of being monkeypatched away. It also holds the signing keys, so tests
can mint session tokens that the JWKS it serves will (or will not) vouch for.

    with FakeClerk() as clerk:
        clerk.add_user("user_1", email="ada@example.com")
        token = clerk.mint_token("user_1")
        clerk.fail_with(503, retry_after=2, on="users", times=1)

It speaks Backend API version 2025-11-10 (`Clerk-API-Version`, which the app pins):
user objects, email addresses and error bodies have that version's shapes, and a
request naming another version is refused with 400, so that the app and the fake
cannot drift apart unnoticed.
"""

from __future__ import annotations

import base64
import copy
import hmac
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["DEFAULT_AZP", "FakeClerk", "RecordedRequest", "build_clerk_user"]

DEFAULT_SECRET_KEY = "sk_test_fakeclerk_0123456789"
DEFAULT_AZP = "http://localhost:3000"
ISSUER = "https://clerk.fake.test"
API_VERSION = "2025-11-10"

PathFamily = Literal["users", "jwks", "count"]
_RSA_HASHES = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}
_GARBLED_BODY = b'{"id": "user_\xff\xfe<html>502 Bad Gateway'


def build_clerk_user(
    user_id: str | None = None,
    *,
    email: str | None = "ada@example.com",
    other_emails: Sequence[str] = (),
    first_name: str | None = "Ada",
    last_name: str | None = "Lovelace",
    username: str | None = "ada",
    image_url: str | None = "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9",
    created_at: int | None = None,
    updated_at: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A user object shaped like Clerk's, including fields clerk-sync ignores.

    `other_emails` come *before* the primary `email` in `email_addresses`, as
    they can in Clerk, so code that takes the first address gets caught.
    `overrides` replace (or add) top-level fields verbatim, e.g. `updated_at="x"`.
    """
    user_id = user_id or f"user_{secrets.token_hex(12)}"
    created_at = created_at if created_at is not None else int(time.time() * 1000)
    addresses = [_email_address(address) for address in other_emails]
    primary_id = None
    if email is not None:
        primary = _email_address(email)
        primary_id = primary["id"]
        addresses.append(primary)
    user: dict[str, Any] = {
        "id": user_id,
        "object": "user",
        "username": username,
        "first_name": first_name,
        "last_name": last_name,
        "image_url": image_url,
        "has_image": False,
        "primary_email_address_id": primary_id,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "email_addresses": addresses,
        "phone_numbers": [],
        "web3_wallets": [],
        "external_accounts": [],
        "saml_accounts": [],
        "public_metadata": {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "external_id": None,
        "last_sign_in_at": created_at,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "created_at": created_at,
        "updated_at": updated_at if updated_at is not None else created_at,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "last_active_at": created_at,
        "legal_accepted_at": None,
        "mfa_enabled_at": None,
        "mfa_disabled_at": None,
        "password_last_updated_at": None,
        "bypass_client_trust": False,
        "enterprise_accounts": [],
        "passkeys": [],
        "locale": None,
    }
    user.update(overrides)
    return user


def _email_address(address: str) -> dict[str, Any]:
    return {
        "id": f"idn_{secrets.token_hex(12)}",
        "object": "email_address",
        "email_address": address,
        "reserved": False,
        "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": None},
        "linked_to": [],
        "matches_sso_connection": False,
        "created_at": int(time.time() * 1000),
        "updated_at": int(time.time() * 1000),
    }


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    """Every header except Authorization, which is secret; see `authorized`."""
    authorized: bool
    """Whether Authorization was `Bearer <the fake's secret key>`."""


@dataclass(slots=True)
class _Fault:
    scope: PathFamily | None
    remaining: int | None  # None: until healed
    status: int | None = None
    retry_after: str | None = None
    garbled: bool = False
    canned: bool = False
    body: object = None
    delay: float = 0.0
    trickle: float = 0.0

    def applies_to(self, family: str | None) -> bool:
        return (self.scope is None or self.scope == family) and self.remaining != 0

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


class FakeClerk:
    def __init__(self, *, secret_key: str = DEFAULT_SECRET_KEY) -> None:
        self.secret_key = secret_key
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._users: dict[str, dict[str, Any]] = {}
        self._last_created_at = 0
        self._private_keys: dict[str, rsa.RSAPrivateKey] = {}
        self._published_kids: list[str] = []
        self._jwks_requests = 0
        self._requests: list[RecordedRequest] = []
        self._response_faults: dict[PathFamily | None, _Fault] = {}
        self._delay_faults: dict[PathFamily | None, _Fault] = {}
        self._before_answer: Callable[[RecordedRequest], None] | None = None
        self.kid = self.rotate_key()

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> FakeClerk:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FakeClerk:
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("a FakeClerk starts once; make a new one")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the socket: from now on connections are refused. Idempotent."""
        self._stopping.set()  # wakes delayed handlers
        if self._server is not None and self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeClerk is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- keys and tokens ---------------------------------------------------

    def rotate_key(self, *, keep_old: bool = False) -> str:
        """Sign with a new key from now on and publish it; returns (and sets) `kid`."""
        kid = f"ins_{secrets.token_hex(8)}"
        with self._lock:
            key = _pooled_key(len(self._private_keys))
            self._private_keys[kid] = key
            self._published_kids = [*self._published_kids, kid] if keep_old else [kid]
            self.kid = kid
        return kid

    def private_key(self, kid: str | None = None) -> rsa.RSAPrivateKey:
        with self._lock:
            return self._private_keys[kid or self.kid]

    def public_pem(self, kid: str | None = None) -> str:
        """The public key as Clerk's dashboard shows it for CLERK_JWT_KEY (with line breaks)."""
        public_key = self.private_key(kid).public_key()
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode()

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            published = [(kid, self._private_keys[kid]) for kid in self._published_kids]
        keys = []
        for kid, key in published:
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": keys}

    @property
    def jwks_requests(self) -> int:
        """How many requests reached `/v1/jwks`, whatever was answered."""
        with self._lock:
            return self._jwks_requests

    def mint_token(
        self,
        sub: str = "user_test",
        *,
        azp: str | None = DEFAULT_AZP,
        sid: str | None = "sess_test",
        exp_in: int = 60,
        nbf_offset: int = 0,
        kid: str | None = None,
        alg: str = "RS256",
        key: rsa.RSAPrivateKey | bytes | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A session token shaped like Clerk's. A None value in `extra_claims` or `headers` drops that entry.

        RS256/384/512 sign with `key`, else the private key of `kid`, else the
        current key. HS256 signs with `key`, defaulting to the public PEM: the
        classic algorithm-confusion forgery. "none" is unsigned.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "sid": sid,
            "azp": azp,
            "iss": ISSUER,
            "iat": now,
            "nbf": now + nbf_offset,
            "exp": now + exp_in,
        }
        claims.update(extra_claims or {})
        header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid or self.kid}
        header.update(headers or {})

        signing_input = f"{_b64_json(_without_nones(header))}.{_b64_json(_without_nones(claims))}".encode()
        if alg in _RSA_HASHES:
            private_key = key if isinstance(key, rsa.RSAPrivateKey) else self._signing_key_for(kid)
            signature = private_key.sign(signing_input, padding.PKCS1v15(), _RSA_HASHES[alg]())
        elif alg == "HS256":
            secret = key if isinstance(key, bytes) else self.public_pem().encode()
            signature = hmac.new(secret, signing_input, sha256).digest()
        elif alg == "none":
            signature = b""
        else:
            raise ValueError(f"FakeClerk cannot sign with {alg!r}")
        return f"{signing_input.decode()}.{_b64(signature)}"

    def _signing_key_for(self, kid: str | None) -> rsa.RSAPrivateKey:
        with self._lock:
            # A kid the fake never issued still gets a valid signature from the current key.
            return self._private_keys.get(kid or self.kid, self._private_keys[self.kid])

    # -- users -------------------------------------------------------------

    def add_user(self, user_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Store (or replace) a user built by `build_clerk_user`; returns a copy of it.

        Users added later are newer (a later `created_at`) unless `created_at` is given.
        """
        with self._lock:
            if "created_at" not in fields:
                self._last_created_at = max(self._last_created_at + 1, int(time.time() * 1000))
                fields["created_at"] = self._last_created_at
            user = build_clerk_user(user_id, **fields)
            self._users[user["id"]] = user
            return copy.deepcopy(user)

    def remove_user(self, user_id: str) -> None:
        with self._lock:
            self._users.pop(user_id, None)

    def before_answer(self, hook: Callable[[RecordedRequest], None] | None) -> None:
        """Call `hook(request)` before answering each request (after its faults are chosen),
        e.g. to change the users between two pages of a listing. None removes it."""
        with self._lock:
            self._before_answer = hook

    # -- failure modes -----------------------------------------------------

    def fail_with(
        self,
        status: int,
        *,
        retry_after: float | str | None = None,
        times: int | None = None,
        on: PathFamily | None = None,
    ) -> None:
        """Answer `status` (with a Clerk-style error body) on `on` paths, `times` times or until healed."""
        fault = _Fault(
            scope=on,
            remaining=times,
            status=status,
            retry_after=None if retry_after is None else str(retry_after),
        )
        with self._lock:
            self._response_faults[on] = fault

    def respond_with(
        self, body: object, *, status: int = 200, times: int | None = None, on: PathFamily | None = None
    ) -> None:
        """Answer with this JSON instead, e.g. a body of a shape Clerk might one day send."""
        with self._lock:
            self._response_faults[on] = _Fault(
                scope=on, remaining=times, status=status, canned=True, body=body
            )

    def garbled(self, *, times: int | None = None, on: PathFamily | None = None) -> None:
        """Answer 200 with a body that is not JSON (a proxy's error page, a cut-off response)."""
        with self._lock:
            self._response_faults[on] = _Fault(scope=on, remaining=times, garbled=True)

    def delay(self, seconds: float, *, times: int | None = None, on: PathFamily | None = None) -> None:
        """Wait `seconds` before answering, to drive clients into their timeouts."""
        with self._lock:
            self._delay_faults[on] = _Fault(scope=on, remaining=times, delay=seconds)

    def trickle(self, interval: float, *, times: int | None = None, on: PathFamily | None = None) -> None:
        """Answer correctly, but one byte every `interval` seconds, status line and headers included.

        No single read waits long, so only a deadline on the whole call stops a client.
        """
        with self._lock:
            self._response_faults[on] = _Fault(scope=on, remaining=times, trickle=interval)

    def heal(self) -> None:
        """Forget every failure mode."""
        with self._lock:
            self._response_faults.clear()
            self._delay_faults.clear()

    # -- request log -------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    # -- serving (called on the server's threads) --------------------------

    def _handle(self, request: _Handler) -> None:
        split = urlsplit(request.path)
        family = _family(split.path)
        authorization = request.headers.get("Authorization", "")
        authorized = hmac.compare_digest(authorization.encode(), f"Bearer {self.secret_key}".encode())
        recorded = RecordedRequest(
            method=request.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            authorized=authorized,
        )
        with self._lock:
            self._requests.append(recorded)
            if family == "jwks":
                self._jwks_requests += 1
            delay = self._take_fault(self._delay_faults, family)
            response_fault = self._take_fault(self._response_faults, family)
            hook = self._before_answer
        if hook is not None:
            hook(recorded)

        if delay is not None and self._stopping.wait(delay.delay):
            return  # stopped while waiting: drop the connection unanswered
        if response_fault is not None and response_fault.trickle:
            request.trickle_interval = response_fault.trickle
            response_fault = None
        version = request.headers.get("Clerk-API-Version")
        if version is not None and version != API_VERSION:
            request.send_json(400, _errors("api_version_invalid", f"unsupported API version {version!r}"))
            return
        if response_fault is not None:
            if response_fault.garbled:
                request.send(200, _GARBLED_BODY)
                return
            assert response_fault.status is not None
            if response_fault.canned:
                request.send_json(response_fault.status, response_fault.body)
                return
            headers = {"Retry-After": response_fault.retry_after} if response_fault.retry_after else {}
            request.send_json(
                response_fault.status, _errors("fake_failure", "FakeClerk was told to fail"), headers
            )
            return

        if request.command != "GET":
            request.send_json(405, _errors("method_not_allowed", f"{request.command} is not supported"))
        elif not authorized:
            request.send_json(401, _errors("authentication_invalid", "Invalid or missing secret key"))
        elif split.path == "/v1/jwks":
            request.send_json(200, self.jwks())
        elif split.path == "/v1/users":
            self._list_users(request, parse_qs(split.query))
        elif split.path == "/v1/users/count":
            with self._lock:
                total = len(self._users)
            request.send_json(200, {"object": "total_count", "total_count": total})
        elif split.path.startswith("/v1/users/") and "/" not in split.path.removeprefix("/v1/users/"):
            self._get_user(request, unquote(split.path.removeprefix("/v1/users/")))
        else:
            request.send_json(404, _errors("resource_not_found", "not found"))

    def _take_fault(self, faults: dict[PathFamily | None, _Fault], family: str | None) -> _Fault | None:
        for fault in (faults.get(family), faults.get(None)):
            if fault is not None and fault.applies_to(family):
                fault.consume()
                return fault
        return None

    def _get_user(self, request: _Handler, user_id: str) -> None:
        with self._lock:
            user = copy.deepcopy(self._users.get(user_id))
        if user is None:
            request.send_json(404, _errors("resource_not_found", "not found"))
        else:
            request.send_json(200, user)

    def _list_users(self, request: _Handler, query: dict[str, list[str]]) -> None:
        try:
            limit = int(query.get("limit", ["10"])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            request.send_json(422, _errors("form_param_format_invalid", "limit and offset must be integers"))
            return
        if not 1 <= limit <= 500 or offset < 0:
            request.send_json(422, _errors("form_param_value_invalid", "limit must be 1-500, offset >= 0"))
            return
        with self._lock:
            newest_first = sorted(
                self._users.values(), key=lambda u: (u["created_at"], u["id"]), reverse=True
            )
            page = copy.deepcopy(newest_first[offset : offset + limit])
        request.send_json(200, page)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeClerk

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is an expected part of these tests.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "FakeClerk/1.0"
    trickle_interval = 0.0

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    def send_json(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        self.send(status, json.dumps(body).encode(), headers)

    def send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        if self.trickle_interval:
            self._trickle(status, body)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, status: int, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.close_connection = True
        for offset in range(len(head + body)):
            if self.server.fake._stopping.wait(self.trickle_interval):
                return
            try:
                self.wfile.write((head + body)[offset : offset + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up, as it should

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is `FakeClerk.requests`


_key_pool: list[rsa.RSAPrivateKey] = []
_key_pool_lock = threading.Lock()


def _pooled_key(index: int) -> rsa.RSAPrivateKey:
    """The index-th test key. Fakes share them because RSA key generation dominates test time;
    within one fake every key is distinct, which is all rotation needs."""
    with _key_pool_lock:
        while len(_key_pool) <= index:
            _key_pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _key_pool[index]


def _family(path: str) -> PathFamily | None:
    if path == "/v1/jwks":
        return "jwks"
    if path == "/v1/users/count":
        return "count"
    if path == "/v1/users" or path.startswith("/v1/users/"):
        return "users"
    return None


def _errors(code: str, message: str) -> dict[str, Any]:
    return {
        "errors": [{"code": code, "message": message, "long_message": message, "meta": {}}],
        "clerk_trace_id": secrets.token_hex(16),
    }


def _without_nones(data: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in data.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(data: Mapping[str, Any]) -> str:
    return _b64(json.dumps(data, separators=(",", ":")).encode())
