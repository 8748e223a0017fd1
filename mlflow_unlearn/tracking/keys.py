"""The deployment's digest key: the one place where ``MLFLOW_UNLEARN_DIGEST_KEY`` (or ``_FILE``) is read.

A forget request by sample IDs (``ids:<file>``) is recorded only as keyed digests (HMAC-SHA256): the digest of
the whole set (tag ``mlflow_unlearn.forget_digest``, param ``forget.digest``), one digest per ID (the step's
tombstones, a run artifact) and a digest of the spec (param ``forget.spec``) instead of the file's path. Without
the key nobody can test a guessed ID against them; with it, the data owner can check which set a version forgot
(:func:`mlflow_unlearn.tracking.api.verify`). Each record carries the key's fingerprint (:attr:`DigestKey.fingerprint`,
an HMAC of a fixed text), never the key, so keys can rotate: a record says which key made it.

``classes:`` and ``random:`` digests are never keyed: their spec (recorded as written) names the set anyway,
and they work on a deployment without a key.

>>> key = read_digest_key({DIGEST_KEY_ENV: "correct horse battery staple"})
>>> len(key.fingerprint), "staple" in repr(key)
(12, False)
>>> read_digest_key({}) is None
True
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_unlearn.data.forget import ForgetSpec, parse_forget_spec

DIGEST_KEY_ENV = "MLFLOW_UNLEARN_DIGEST_KEY"
DIGEST_KEY_FILE_ENV = "MLFLOW_UNLEARN_DIGEST_KEY_FILE"
#: Shortest accepted key (characters or bytes): a short key could be guessed as easily as the IDs.
MIN_KEY_LENGTH = 16
#: How to configure a key, for messages.
HOW_TO_SET = (f"set {DIGEST_KEY_ENV} to a secret of at least {MIN_KEY_LENGTH} characters (or {DIGEST_KEY_FILE_ENV} "
              "to a file holding it), e.g. export "
              f"{DIGEST_KEY_ENV}=$(python -c 'import secrets; print(secrets.token_hex(32))'), and keep it: it is "
              "needed to verify and to chain later forget steps")
_FINGERPRINT_TEXT = b"mlflow-unlearn/key-fingerprint/v1"
_SPEC_TEXT = b"mlflow-unlearn/forget-spec/v1\0"


class DigestKeyError(ValueError):
    """An ``ids:`` request without a configured digest key, or an unusable key setting."""


@dataclass(frozen=True)
class DigestKey:
    """A secret key for forget digests (its repr shows the fingerprint only).

    Args:
        secret: the key bytes (at least :data:`MIN_KEY_LENGTH`).

    Raises:
        DigestKeyError: for a key that is too short.
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_KEY_LENGTH:
            raise DigestKeyError(f"Expected a digest key of at least {MIN_KEY_LENGTH} bytes but got "
                                 f"{len(self.secret) if isinstance(self.secret, bytes) else type(self.secret).__name__}"
                                 f"; {HOW_TO_SET}")

    @property
    def fingerprint(self) -> str:
        """First 12 hex characters of HMAC(key, a fixed text): names the key in records, reveals nothing of it."""
        return hmac.new(self.secret, _FINGERPRINT_TEXT, hashlib.sha256).hexdigest()[:12]

    def keyed_spec(self, spec: ForgetSpec) -> ForgetSpec:
        """What is recorded instead of an ``ids:`` spec (its file path): its keyed record ``ids:keyed-<24 hex>``.

        >>> record = DigestKey(b"0123456789abcdef").keyed_spec(parse_forget_spec("ids:/srv/a.txt"))
        >>> record.by_ids, record.text.startswith("ids:keyed-"), record.path
        (True, True, '')
        """
        return ForgetSpec.keyed_record(hmac.new(self.secret, _SPEC_TEXT + spec.text.encode(),
                                                hashlib.sha256).hexdigest()[:24])

    def spec_digest(self, spec: str) -> str:
        """:meth:`keyed_spec` of the spec written ``spec``, as text (what a run's ``forget.spec`` param holds)."""
        return self.keyed_spec(parse_forget_spec(spec)).text

    def __repr__(self) -> str:
        return f"DigestKey(fingerprint={self.fingerprint!r})"


def read_digest_key(environ: Mapping[str, str] | None = None) -> DigestKey | None:
    """The digest key of this deployment, from ``environ`` (default: this process's environment), or None.

    ``MLFLOW_UNLEARN_DIGEST_KEY`` wins over ``MLFLOW_UNLEARN_DIGEST_KEY_FILE`` (whose file's content, without
    surrounding whitespace, is the key).

    Raises:
        DigestKeyError: for an unreadable key file or a key that is too short.
    """
    env = os.environ if environ is None else environ
    text = env.get(DIGEST_KEY_ENV, "")
    if not text and env.get(DIGEST_KEY_FILE_ENV, ""):
        try:
            text = Path(env[DIGEST_KEY_FILE_ENV]).read_text().strip()
        except OSError as exc:
            raise DigestKeyError(f"Cannot read the digest key file named by {DIGEST_KEY_FILE_ENV} "
                                 f"({type(exc).__name__}); {HOW_TO_SET}") from None
    return DigestKey(text.encode()) if text else None


def require_key(key: DigestKey | None) -> DigestKey:
    """``key``, or the one-line refusal of an ``ids:`` request on a deployment without a key.

    Raises:
        DigestKeyError: when ``key`` is None.
    """
    if key is None:
        raise DigestKeyError(f"A forget request by sample IDs (ids:) needs a digest key, and none is configured: "
                             f"{HOW_TO_SET}")
    return key
