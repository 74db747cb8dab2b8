"""What the gateway's AMI user may do, and what the gateway does about too much.

A call-logging gateway reads events and places click-to-call calls; it needs
``read = all`` and ``write = originate,reporting``. An account that can also
run CLI commands (``command``), rewrite the configuration (``config``) or load
modules and reload the PBX (``system``) turns a leaked gateway secret into a
takeover of the phone system, so the gateway checks after each login.

Asterisk has no action that names an account's classes. ``ListCommands`` lists
every action the account may run, each with the classes that allow it
("Execute Asterisk CLI Command.  (Priv: command,all)"); an action is listed
when the account holds ANY of its classes, so only an action that needs exactly
one class proves that class: ``Command`` proves ``command``, ``UpdateConfig``
and ``CreateConfig`` prove ``config``, ``ModuleLoad`` proves ``system``
(``Reload``, ``system,config``, proves neither on its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the link imports this module
    from connectors.ami.link import AmiLink, OnLogin

log = logging.getLogger(__name__)

Policy = Literal["refuse", "warn"]

DANGEROUS_WRITE_CLASSES = frozenset({"system", "command", "config"})
MINIMAL_WRITE = "originate,reporting"


class ExcessiveRights(Exception):
    """The AMI user holds write classes the gateway must not have; a person must fix manager.conf."""

    def __init__(self, username: str, rights: frozenset[str]) -> None:
        super().__init__(excess_message(username, rights))
        self.username = username
        self.rights = rights


def dangerous_rights(listing: Mapping[str, str | list[str]]) -> frozenset[str]:
    """The dangerous write classes a ``ListCommands`` answer proves the account holds."""
    found: set[str] = set()
    for value in listing.values():
        for item in [value] if isinstance(value, str) else value:
            _, marker, privs = item.rpartition("(Priv:")
            classes = {p.strip() for p in privs.rstrip(") ").split(",")} - {"all", "<none>", ""}
            if marker and len(classes) == 1:
                found |= classes
    return frozenset(found & DANGEROUS_WRITE_CLASSES)


def excess_message(username: str, rights: frozenset[str]) -> str:
    return (
        f"AMI user {username!r} holds write rights it does not need: {', '.join(sorted(rights))}. "
        f"Remove them from manager.conf (least privilege: read = all, write = {MINIMAL_WRITE})"
    )


async def check_rights(link: AmiLink, policy: Policy, *, timeout: float | None = None) -> frozenset[str]:
    """Ask the PBX (``ListCommands`` over a logged-in link) which dangerous
    rights our user holds. ``refuse``: raise ``ExcessiveRights`` if any;
    ``warn``: log them at ERROR level. Returns them. The link's own errors
    (``AmiLinkLost``, ``AmiTimeout``...) pass through: nothing was learnt."""
    rights = dangerous_rights(await link.action("ListCommands", timeout=timeout))
    if rights:
        if policy == "refuse":
            raise ExcessiveRights(link.settings.username, rights)
        log.error("%s", excess_message(link.settings.username, rights))
    return rights


def rights_guard(policy: Policy, on_refused: Callable[[ExcessiveRights], None]) -> OnLogin:
    """An ``AmiLink(on_login=...)`` hook: check after every login (manager.conf
    may change while the gateway runs) and hand a refusal to ``on_refused``,
    which stops the gateway. A link lost during the check is checked at its
    next login."""
    from connectors.ami.link import AmiError

    async def guard(link: AmiLink) -> None:
        try:
            await check_rights(link, policy)
        except ExcessiveRights as exc:
            on_refused(exc)
        except AmiError as exc:
            log.warning("AMI rights not checked at this login: %s", exc)

    return guard
