"""The AMI user's rights (issue 11): the gateway refuses to run, or warns
loudly, when its account holds ``system``, ``command`` or ``config`` write
rights, which it reads with ``ListCommands`` after each login.

The in-process AMI server answers ``ListCommands`` as Asterisk 22 does for an
account's ``write =`` classes (``write_perms``); the link is the real one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from connectors.ami.link import AmiLink, LinkSettings, OnLogin
from connectors.ami.rights import ExcessiveRights, Policy, check_rights, dangerous_rights, rights_guard
from connectors.ami.server import AmiServer
from tests.test_ami_link import until

SECRET = "gateway-secret"
MINIMAL = {"originate", "reporting"}  # README's manager.conf: write = originate,reporting
EVERYTHING = {"system", "call", "log", "verbose", "command", "agent", "user", "config", "dtmf", "reporting", "cdr",
              "dialplan", "originate", "agi", "cc", "aoc", "test", "security", "message"}  # write = all


@asynccontextmanager
async def connected(
    write_perms: set[str], on_login: OnLogin | None = None, action_timeout: float = 5.0
) -> AsyncIterator[tuple[AmiServer, AmiLink]]:
    async with AmiServer(failed_login_delay=0, secret=SECRET, write_perms=write_perms) as server:
        settings = LinkSettings("127.0.0.1", server.port, "gateway", SECRET, backoff_initial=0.05,
                                action_timeout=action_timeout)
        link = AmiLink(settings, on_login=on_login, rng=random.Random(1))
        link.start()
        try:
            await link.wait_connected(5.0)
            yield server, link
        finally:
            await link.close()


def list_commands(server: AmiServer) -> int:
    return sum(1 for a in server.actions if a.get("Action") == "ListCommands")


# -- reading the ListCommands answer -------------------------------------------------------------


def test_only_an_action_that_needs_one_class_proves_it() -> None:
    """Asterisk lists an action when the account holds any of its classes."""
    answer = {
        "Response": "Success",
        "Ping": "Keepalive command.  (Priv: <none>)",
        "Reload": "Send a reload event.  (Priv: system,config,all)",  # system OR config: proves neither
        "GetConfig": "Retrieve configuration.  (Priv: system,config,all)",
        "Originate": "Originate a call.  (Priv: originate,all)",
    }
    assert dangerous_rights(answer) == frozenset()
    assert dangerous_rights({**answer, "Command": "Execute Asterisk CLI Command.  (Priv: command,all)"}) == {"command"}
    assert dangerous_rights({**answer, "UpdateConfig": "Update basic configuration.  (Priv: config,all)"}) == {"config"}
    assert dangerous_rights({**answer, "ModuleLoad": "Module management.  (Priv: system,all)"}) == {"system"}
    assert dangerous_rights({"Response": "Success", "Message": "no listing here"}) == frozenset()


# -- the check over a link ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write_perms", "dangerous"),
    [
        (MINIMAL, set()),
        ({"originate", "call"}, set()),
        (MINIMAL | {"command"}, {"command"}),  # Command
        (MINIMAL | {"config"}, {"config"}),  # UpdateConfig, CreateConfig
        (MINIMAL | {"system"}, {"system"}),  # ModuleLoad, DBPut
        (EVERYTHING, {"system", "command", "config"}),
    ],
)
async def test_refuse_raises_for_a_dangerous_right_and_passes_a_minimal_user(
    write_perms: set[str], dangerous: set[str]
) -> None:
    async with connected(write_perms) as (_server, link):
        if dangerous:
            with pytest.raises(ExcessiveRights) as refused:
                await check_rights(link, "refuse", timeout=2.0)
            assert refused.value.rights == dangerous
            message = str(refused.value)
            assert "'gateway'" in message and "write = originate,reporting" in message
            assert all(cls in message for cls in dangerous), message
        else:
            assert await check_rights(link, "refuse", timeout=2.0) == frozenset()


@pytest.mark.parametrize(("write_perms", "dangerous"), [(EVERYTHING, {"system", "command", "config"}), (MINIMAL, set())])
async def test_warn_logs_an_error_and_goes_on(
    caplog: pytest.LogCaptureFixture, write_perms: set[str], dangerous: set[str]
) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.ami.rights")
    async with connected(write_perms) as (_server, link):
        assert await check_rights(link, "warn", timeout=2.0) == dangerous
        assert link.is_connected
    errors = [r.getMessage() for r in caplog.records if r.name == "connectors.ami.rights"]
    if dangerous:
        assert len(errors) == 1
        assert all(r.levelno == logging.ERROR for r in caplog.records if r.name == "connectors.ami.rights")
        assert "command, config, system" in errors[0]
    else:
        assert errors == []


async def test_a_read_only_user_has_nothing_dangerous() -> None:
    async with AmiServer(failed_login_delay=0, secret=SECRET, write_allowed=False) as server:
        link = AmiLink(LinkSettings("127.0.0.1", server.port, "gateway", SECRET))
        link.start()
        try:
            await link.wait_connected(5.0)
            assert await check_rights(link, "refuse", timeout=2.0) == frozenset()
        finally:
            await link.close()


# -- the guard run after every login ------------------------------------------------------------------


def recorder() -> tuple[list[ExcessiveRights], Callable[[ExcessiveRights], None]]:
    refusals: list[ExcessiveRights] = []
    return refusals, refusals.append


@pytest.mark.parametrize("policy", ["refuse", "warn"])
async def test_the_guard_refuses_at_the_first_login_and_again_after_a_reconnect(policy: Policy) -> None:
    refusals, on_refused = recorder()
    async with connected(MINIMAL | {"command"}, rights_guard(policy, on_refused)) as (server, link):
        # The link's own ListCommands, then the guard's, after the resync.
        await until(lambda: list_commands(server) == 2, 5.0, "the guard's ListCommands")
        await until(lambda: len(refusals) == (1 if policy == "refuse" else 0), 2.0, "the refusal")
        await server.drop_clients()  # manager.conf is still wrong at the next login
        await until(lambda: list_commands(server) == 4, 5.0, "the next login's check")
        await asyncio.sleep(0.05)
    assert [r.rights for r in refusals] == ([{"command"}] * 2 if policy == "refuse" else [])


async def test_the_guard_lets_a_minimal_user_run() -> None:
    refusals, on_refused = recorder()
    async with connected(MINIMAL, rights_guard("refuse", on_refused)) as (server, link):
        await until(lambda: list_commands(server) == 2, 5.0, "the guard's ListCommands")
        response = await link.action("Ping", timeout=2.0)  # after the guard's answer
        assert response["Ping"] == "Pong"
    assert refusals == []


async def test_a_check_left_unanswered_is_made_again_at_the_next_login(caplog: pytest.LogCaptureFixture) -> None:
    """No answer within the action deadline teaches nothing: the link stays up,
    a warning says so, and the next login checks again."""
    refusals, on_refused = recorder()
    async with connected(MINIMAL | {"config"}, rights_guard("refuse", on_refused), action_timeout=0.2) as (server, _):
        await until(lambda: len(refusals) == 1, 5.0, "the first refusal")
        answer = server.action_handlers["ListCommands"]
        # The next session: the link's own check (3rd) is answered, the guard's (4th) is not.
        server.action_handlers["ListCommands"] = lambda action: answer(action) if list_commands(server) % 2 else []
        await server.drop_clients()
        await until(lambda: any("rights not checked" in r.getMessage() for r in caplog.records), 5.0, "the warning")
        assert len(refusals) == 1
        server.action_handlers["ListCommands"] = answer
        await server.drop_clients()
        await until(lambda: len(refusals) == 2, 5.0, "the refusal at the next login")


# -- the gateway process (needs gateway/config.py and gateway/cli.py wired) -------------------------


@pytest.mark.parametrize(("policy", "write_perms", "refused"), [
    (None, MINIMAL | {"command"}, True),  # "refuse" is the default
    ("warn", MINIMAL | {"command"}, False),
    ("refuse", MINIMAL, False),
])
async def test_cti_gateway_run_refuses_a_user_with_dangerous_rights(
    tmp_path: Path, unused_tcp_port: int, policy: str | None, write_perms: set[str], refused: bool
) -> None:
    env = {**os.environ, "TEST_AMI_SECRET": SECRET}
    async with AmiServer(failed_login_delay=0, secret=SECRET, write_perms=write_perms) as server:
        config = tmp_path / "gw.toml"
        config.write_text(
            f'[ami]\nhost = "127.0.0.1"\nport = {server.port}\nusername = "gateway"\nsecret_env = "TEST_AMI_SECRET"\n'
            + (f'excessive_rights = "{policy}"\n' if policy else "")
            + f'[http]\nport = {unused_tcp_port}\n[store]\npath = "gw.sqlite3"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(config), cwd=Path(__file__).resolve().parents[1],
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await server.wait_for_login(timeout=20)
            # The link's ListCommands, then the guard's: its verdict is out once both are answered.
            await until(lambda: list_commands(server) >= 2, 20.0, "the rights check")
            if not refused:
                await asyncio.sleep(0.5)
                assert proc.returncode is None  # still running
                proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = stderr.decode()
    assert proc.returncode == (2 if refused else 0), text
    assert ("command" in text and "write = originate,reporting" in text) == (refused or policy == "warn"), text
    assert SECRET not in text
