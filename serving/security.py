"""Who may do what on the serving endpoint, and proof of what it answered.

- **Signed request ids.** An answer's `request_id` is a random nonce and its HMAC-SHA256
  under a deployment secret, so feedback can only name answers this deployment gave: an
  invented or altered id is refused without a lookup. The secret comes from
  `DRIFTLOOP_REQUEST_ID_SECRET` (comma-separated during a rotation: the first signs, all
  verify) or, unset, is generated once per serving home and kept there, so replicas
  sharing a home agree.
- **Keys by role.** `admin` (routing, rollback, reload; everything a viewer may) and
  `viewer` (`/readyz` details, `GET /admin/state`), each from its variable and/or a mounted
  file of one key per line. A file is re-read when it changes, so a key is rotated without
  a restart: write the new key beside the old one, move the clients, remove the old line.
  A `feedback` key, when set, is what `/v1/feedback` asks for. A key is at least 32
  characters; a shorter one refuses to start (in one sentence, without the key).
- **The audit log.** One entry per admin action (and per refused attempt) in the audit
  trail beside the prediction log (`driftloop.audit`): time, role, key id (the first 8 hex
  digits of the key's SHA-256, never the key), action, before/after, outcome, client
  address. `driftloop status` and the Dagster asset `serving_admin_audit` show it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from driftloop.audit import AuditTrail
from driftloop.settings import MIN_ADMIN_KEY_CHARS, Settings, WeakAdminKey

logger = logging.getLogger("ray.serve")

Role = Literal["admin", "viewer", "feedback"]
ADMIN_ROLE: Role = "admin"
VIEWER_ROLE: Role = "viewer"
FEEDBACK_ROLE: Role = "feedback"
# What each role may also do: an admin key is accepted wherever a viewer's or a feedback
# key is.
GRANTS: dict[Role, frozenset[Role]] = {
    ADMIN_ROLE: frozenset({ADMIN_ROLE, VIEWER_ROLE, FEEDBACK_ROLE}),
    VIEWER_ROLE: frozenset({VIEWER_ROLE}),
    FEEDBACK_ROLE: frozenset({FEEDBACK_ROLE}),
}
KEY_ID_CHARS = 8
NONCE_BYTES = 12  # 96 random bits: no two answers share an id in any realistic lifetime
MAC_BYTES = 16  # 128 bits of HMAC-SHA256: forging one is as hard as guessing a key
REQUEST_ID_CHARS = 2 * (NONCE_BYTES + MAC_BYTES)
SECRET_FILE = "request_id.secret"  # under the serving home, when no secret is configured
MIN_SECRET_CHARS = 32
REFUSAL_OUTCOMES = frozenset({"401", "403"})


class WeakSecret(WeakAdminKey):
    """A key or secret that is too short or unreadable; serving refuses to start."""


def key_id(key: str) -> str:
    """What the audit log and the state show of a key: enough to tell keys apart."""
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_ID_CHARS]


class RequestIds:
    """Issues and checks signed request ids (hex: nonce then MAC, `REQUEST_ID_CHARS`)."""

    def __init__(self, keys: list[bytes], source: str) -> None:
        if not keys:
            raise ValueError("a request id needs at least one secret")
        self._macs = [hmac.new(key, digestmod=hashlib.sha256) for key in keys]
        self.source = source  # where the secret came from, for the admin state

    def issue(self) -> str:
        nonce = os.urandom(NONCE_BYTES)
        return nonce.hex() + self._mac(self._macs[0], nonce)

    def verify(self, request_id: str) -> bool:
        """Whether this deployment issued `request_id` (under any configured secret)."""
        if len(request_id) != REQUEST_ID_CHARS:
            return False
        try:
            nonce = bytes.fromhex(request_id[: 2 * NONCE_BYTES])
        except ValueError:
            return False
        signature = request_id[2 * NONCE_BYTES :].lower()
        return any(hmac.compare_digest(self._mac(m, nonce), signature) for m in self._macs)

    @staticmethod
    def _mac(base: Any, nonce: bytes) -> str:
        mac = base.copy()  # the key's pads are hashed once, in __init__
        mac.update(nonce)
        return mac.hexdigest()[: 2 * MAC_BYTES]

    @classmethod
    def of(cls, settings: Settings) -> RequestIds:
        """From `DRIFTLOOP_REQUEST_ID_SECRET`, else the serving home's own secret."""
        configured = _listed(settings.request_id_secret)
        if configured:
            for secret in configured:
                if len(secret) < MIN_SECRET_CHARS:
                    raise WeakSecret(
                        f"DRIFTLOOP_REQUEST_ID_SECRET holds a secret of {len(secret)} "
                        f"characters, fewer than the {MIN_SECRET_CHARS} it needs: generate "
                        "one with `python -c 'import secrets; print(secrets.token_hex(32))'`."
                    )
            return cls([s.encode() for s in configured], "DRIFTLOOP_REQUEST_ID_SECRET")
        path = settings.serving_dir / SECRET_FILE
        return cls([_home_secret(path)], f"generated, kept in {path}")


def _home_secret(path: Path) -> bytes:
    """The home's secret, created once: the first replica's file wins (a link cannot
    replace an existing name), every other replica reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another replica made it first: use theirs
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise WeakSecret(f"{path} holds no request id secret of {MIN_SECRET_CHARS}+ characters")
    return secret.encode()


@dataclass(frozen=True)
class Caller:
    """Who presented a key: its role and its id (never the key)."""

    role: Role
    key_id: str


class KeySource:
    """The keys of one role: its variable's key plus its file's, the file re-read on every
    keyed request (a bad new file keeps the keys that were valid, and says why in the log)."""

    def __init__(self, role: Role, variable: str, key: SecretStr | None, file: str | None) -> None:
        self.role = role
        self.variable = variable
        value = key.get_secret_value().strip() if key is not None else ""
        self.env_keys = (_checked(value, variable),) if value else ()
        self.file = Path(file) if file and file.strip() else None
        self._text: str | None = None
        self._file_keys: tuple[str, ...] = ()
        if self.file is not None:
            try:
                self._reload(first=True)
            except OSError as error:
                raise WeakSecret(
                    f"{variable}_FILE names {self.file}, which cannot be read: {error.strerror}"
                ) from None

    def current(self) -> tuple[str, ...]:
        if self.file is not None:
            try:
                self._reload(first=False)
            except OSError as error:  # mid-rotation, or removed: keep the keys we had
                logger.error("%s_FILE %s cannot be read now: %s", self.variable, self.file, error)
        return self.env_keys + self._file_keys

    def _reload(self, first: bool) -> None:
        """Read the file again (a few bytes, only on keyed requests): a rotation takes
        effect on the next request, however the file was replaced."""
        assert self.file is not None
        text = self.file.read_text()
        if text == self._text:
            return
        self._text = text
        lines = [line.strip() for line in text.splitlines()]
        keys = [line for line in lines if line and not line.startswith("#")]
        try:
            where = f"{self.variable}_FILE line"
            checked = tuple(_checked(k, f"{where} {i + 1}") for i, k in enumerate(keys))
        except WeakSecret as error:
            if first:
                raise
            logger.error("%s; keeping the keys read before", error)
            return
        self._file_keys = checked
        if not first:
            ids = ", ".join(key_id(k) for k in checked) or "none"
            logger.warning("%s_FILE changed: %s keys now %s", self.variable, self.role, ids)


class KeyRing:
    """Every role's keys; `identify` tells which role a presented key has."""

    def __init__(self, sources: list[KeySource]) -> None:
        self.sources = sources

    @classmethod
    def of(cls, settings: Settings) -> KeyRing:
        return cls(
            [
                KeySource(
                    ADMIN_ROLE,
                    "DRIFTLOOP_ADMIN_API_KEY",
                    settings.admin_api_key,
                    settings.admin_api_key_file,
                ),
                KeySource(
                    VIEWER_ROLE,
                    "DRIFTLOOP_VIEWER_API_KEY",
                    settings.viewer_api_key,
                    settings.viewer_api_key_file,
                ),
                KeySource(
                    FEEDBACK_ROLE, "DRIFTLOOP_FEEDBACK_API_KEY", settings.feedback_api_key, None
                ),
            ]
        )

    def configured(self, role: Role) -> bool:
        """Whether any key can act as `role` (an admin key acts as every role)."""
        return any(role in GRANTS[s.role] and s.current() for s in self.sources)

    def has_own(self, role: Role) -> bool:
        """Whether keys of `role` itself are configured (not only keys that act as it)."""
        return any(s.role == role and s.current() for s in self.sources)

    def identify(self, presented: str) -> Caller | None:
        """The role of `presented`, the highest if it is listed twice; None if unknown.
        Every key is compared (in constant time), so timing tells nothing."""
        found: Caller | None = None
        candidate = presented.strip().encode()
        for source in self.sources:
            for key in source.current():
                if hmac.compare_digest(candidate, key.encode()) and found is None:
                    found = Caller(source.role, key_id(key))
        return found

    def key_ids(self) -> dict[str, list[str]]:
        return {s.role: [key_id(k) for k in s.current()] for s in self.sources}


class AuditLog:
    """Admin actions and refused attempts, in the shared audit trail (`driftloop.audit`)."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def record(
        self,
        *,
        action: str,
        outcome: str,
        caller: Caller | None,
        client: str | None,
        forwarded_for: str | None = None,
        before: Any = None,
        after: Any = None,
        presented_key_id: str | None = None,
    ) -> None:
        self.trail.append(
            {
                "action": action,
                "outcome": outcome,
                "role": caller.role if caller else None,
                "key_id": caller.key_id if caller else presented_key_id,
                "client": client,
                "forwarded_for": forwarded_for,
                "before": before,
                "after": after,
            },
            refusal=outcome in REFUSAL_OUTCOMES,
        )


def _checked(key: str, where: str) -> str:
    if len(key) < MIN_ADMIN_KEY_CHARS:
        raise WeakSecret(
            f"{where} has a key of {len(key)} characters, fewer than the "
            f"{MIN_ADMIN_KEY_CHARS} a key needs: generate one with `python -c "
            "'import secrets; print(secrets.token_urlsafe(32))'`."
        )
    return key


def _listed(secret: SecretStr | None) -> list[str]:
    if secret is None:
        return []
    return [part.strip() for part in secret.get_secret_value().split(",") if part.strip()]
