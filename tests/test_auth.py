"""Passwords, signed tokens and sessions (gateway/auth.py), and the two commands
that hand them out: ``cti-gateway hash-password`` and ``cti-gateway token``,
run as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.auth import Signer, TokenError, hash_password, is_password_hash, verify_password
from tests.harness import PASSWORD, password_hash

REPO = Path(__file__).resolve().parents[1]
SECRET = "cli-test-secret-0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- passwords --------------------------------------------------------------------------------


def test_a_password_verifies_against_its_hash_and_nothing_else() -> None:
    stored = password_hash()  # hash_password(PASSWORD), made once per session
    assert is_password_hash(stored)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert PASSWORD not in stored
    assert verify_password(PASSWORD, stored)
    for wrong in ("", PASSWORD.upper(), PASSWORD + " ", PASSWORD[:-1]):
        assert not verify_password(wrong, stored)


def test_every_hash_has_its_own_salt_and_unicode_passwords_work() -> None:
    first, second = hash_password("пароль-123"), hash_password("пароль-123")
    assert first != second
    assert verify_password("пароль-123", first) and verify_password("пароль-123", second)
    assert not verify_password("пароль-124", first)


@pytest.mark.parametrize("stored", [
    "",
    "plain text",
    "scrypt$",
    "scrypt$16384$8$1$salt",  # five fields
    "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "scrypt$abc$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "scrypt$16383$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # n not a power of 2
    "scrypt$-16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "scrypt$99999999999999999999$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "scrypt$1048576$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # over maxmem
    "scrypt$16384$8$1$!!!!$AAAA",
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$ÄÄÄÄ",
    "scrypt$16384$0$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
])
def test_a_malformed_hash_never_verifies_and_never_raises(stored: str) -> None:
    assert verify_password(PASSWORD, stored) is False


def test_is_password_hash_knows_the_shape() -> None:
    assert is_password_hash(password_hash())
    for value in ("", PASSWORD, "scrypt$$$$$", "scrypt$1$2$3$4", "$2b$12$abcdefghijklmnopqrstuv"):
        assert not is_password_hash(value)


# -- signed tokens -------------------------------------------------------------------------------


def test_a_token_names_its_purpose_subject_and_expiry() -> None:
    clock = Clock()
    signer = Signer(b"0123456789abcdef", clock)
    token, claims = signer.issue("ws", "anna", 300)
    assert (claims.purpose, claims.subject, claims.expires_at) == ("ws", "anna", clock.now + 300)
    assert signer.check(token, "ws") == claims
    # Another signer with the same secret (the gateway after a restart) accepts it.
    assert Signer(b"0123456789abcdef", clock).check(token, "ws") == claims
    # Tokens are distinct even for the same subject at the same moment.
    assert signer.issue("ws", "anna", 300)[0] != token


def test_a_token_is_only_good_for_its_purpose() -> None:
    signer = Signer(b"0123456789abcdef", Clock())
    ws_token, _ = signer.issue("ws", "anna", 300)
    cookie, _ = signer.issue("session", "anna", 300)
    with pytest.raises(TokenError, match="not a session token"):
        signer.check(ws_token, "session")
    with pytest.raises(TokenError, match="not a ws token"):
        signer.check(cookie, "ws")


def test_a_token_expires_by_the_injected_clock() -> None:
    clock = Clock()
    signer = Signer(b"0123456789abcdef", clock)
    token, _ = signer.issue("ws", "anna", 60)
    clock.now += 59.999
    assert signer.check(token, "ws").subject == "anna"
    clock.now += 0.001
    with pytest.raises(TokenError, match="token expired"):
        signer.check(token, "ws")
    clock.now -= 3600  # a clock that goes back does not make it expire
    assert signer.check(token, "ws").subject == "anna"


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1:]


def test_a_tampered_token_is_refused() -> None:
    signer = Signer(b"0123456789abcdef", Clock())
    token, _ = signer.issue("ws", "anna", 300)
    body, signature = token.split(".")
    boris_body = signer.issue("ws", "boris", 300)[0].split(".")[0]
    forged = [
        _flip(token, 0),  # the body
        _flip(token, len(body) - 1),
        _flip(token, len(token) - 1),  # the signature
        f"{boris_body}.{signature}",  # another body under this signature
        f"{body}.",
        f"{body}{signature}",  # no dot
        body,
        "",
        ".",
        f"{body}.{signature}.{signature}",
        Signer(b"another-secret-0123", Clock()).issue("ws", "anna", 300)[0],
    ]
    for token in forged:
        with pytest.raises(TokenError, match="bad signature"):
            signer.check(token, "ws")


@pytest.mark.parametrize("where", ["signature", "body"])
def test_a_token_with_non_ascii_characters_is_refused(where: str) -> None:
    """Regression: hmac.compare_digest(str, str) raised TypeError for non-ASCII text."""
    signer = Signer(b"0123456789abcdef", Clock())
    token, _ = signer.issue("ws", "anna", 300)
    body, signature = token.split(".")
    mangled = f"{body}.{signature[:-1]}é" if where == "signature" else f"{body}é.{signature}é"
    with pytest.raises(TokenError):
        signer.check(mangled, "ws")


def test_a_revoked_token_is_refused_and_others_are_not() -> None:
    clock = Clock()
    signer = Signer(b"0123456789abcdef", clock)
    token, claims = signer.issue("session", "olga", 3600)
    other, _ = signer.issue("session", "olga", 3600)
    signer.revoke(claims)
    with pytest.raises(TokenError, match="token revoked"):
        signer.check(token, "session")
    assert signer.check(other, "session").subject == "olga"
    # Revoking more later (pruning the expired entries) keeps a live revocation.
    clock.now += 1800
    signer.revoke(signer.issue("session", "olga", 10)[1])
    with pytest.raises(TokenError, match="token revoked"):
        signer.check(token, "session")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Signer(b"too short", time.time)


# -- the commands ------------------------------------------------------------------------------------


def _cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("cti-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    return subprocess.run([*command, *args], input=stdin, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_hash_password_reads_stdin_and_prints_a_hash_that_verifies() -> None:
    result = _cli("hash-password", stdin="лошадь батарейка скрепка\n")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert result.stdout == printed + "\n"
    assert is_password_hash(printed)
    assert verify_password("лошадь батарейка скрепка", printed)
    assert "лошадь" not in result.stdout + result.stderr


def test_hash_password_refuses_a_short_password() -> None:
    result = _cli("hash-password", stdin="1234567\n")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "at least 8 characters" in result.stderr


def _config(tmp_path: Path, *, secret: bool = True) -> Path:
    stored = password_hash()
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[http]\n"
        + ('secret_env = "CTI_TEST_SECRET"\n' if secret else "")
        + f"""
[[users]]
login = "anna"
name = "Анна Иванова"
role = "agent"
password_hash = "{stored}"
team = "sales"
extensions = ["101", "201"]

[[users]]
login = "olga"
role = "manager"
password_hash = "{stored}"
leads = ["sales"]
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("agent", ["anna", "101", "201"])
def test_token_prints_a_token_the_gateway_accepts(tmp_path: Path, agent: str) -> None:
    before = time.time()
    result = _cli("token", "--config", str(_config(tmp_path)), agent, env={"CTI_TEST_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    claims = Signer(SECRET.encode(), time.time).check(token, "ws")
    assert claims.subject == "anna"
    assert before + 12 * 3600 - 1 <= claims.expires_at <= time.time() + 12 * 3600  # the default --ttl
    assert token not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_token_takes_a_ttl_in_hours(tmp_path: Path) -> None:
    result = _cli("token", "--config", str(_config(tmp_path)), "--ttl", "0.5", "anna",
                  env={"CTI_TEST_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    claims = Signer(SECRET.encode(), time.time).check(result.stdout.strip(), "ws")
    assert abs(claims.expires_at - time.time() - 1800) < 60


@pytest.mark.parametrize("agent", ["nobody", "olga", "999"])
def test_token_refuses_what_is_not_an_agent(tmp_path: Path, agent: str) -> None:
    result = _cli("token", "--config", str(_config(tmp_path)), agent, env={"CTI_TEST_SECRET": SECRET})
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"no agent with login or extension {agent!r}" in result.stderr


def test_token_needs_the_signing_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CTI_TEST_SECRET"}
    result = subprocess.run([sys.executable, "-m", "gateway", "token", "--config", str(_config(tmp_path)), "anna"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "CTI_TEST_SECRET" in result.stderr
    result = _cli("token", "--config", str(_config(tmp_path, secret=False)), "anna")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "secret_env" in result.stderr
