"""People: users, their roles and teams, and which extensions are whose.

Configured once for the whole product (``[[users]]`` in the config). Pure data;
the HTTP layer checks roles with it, the hub maps ringing extensions to agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum


class Role(str, Enum):
    AGENT = "agent"
    MANAGER = "manager"
    MARKETER = "marketer"
    ADMIN = "admin"


@dataclass(frozen=True)
class User:
    login: str
    name: str
    role: Role
    password_hash: str = field(repr=False)
    team: str | None = None  # the team an agent works in
    leads: tuple[str, ...] = ()  # teams a manager leads
    extensions: tuple[str, ...] = ()  # an agent's phones
    daily_target: float | None = None  # KPI points a day; None: the [kpi] daily_target

    def public(self) -> dict[str, object]:
        return {"login": self.login, "name": self.name, "role": self.role.value, "team": self.team,
                "leads": list(self.leads), "extensions": list(self.extensions)}


class Directory:
    """Users by login and agents by extension."""

    def __init__(self, users: Iterable[User] = ()) -> None:
        self._by_login: dict[str, User] = {}
        self._by_extension: dict[str, User] = {}
        for user in users:
            self._by_login[user.login] = user
            for extension in user.extensions:
                self._by_extension[extension] = user

    def __iter__(self) -> Iterator[User]:
        return iter(self._by_login.values())

    def __len__(self) -> int:
        return len(self._by_login)

    def by_login(self, login: str) -> User | None:
        return self._by_login.get(login)

    def by_extension(self, extension: str) -> User | None:
        return self._by_extension.get(extension)

    def agent(self, name: str) -> User | None:
        """An agent named by login or by one of his extensions (the ``token`` command)."""
        user = self._by_login.get(name) or self._by_extension.get(name)
        return user if user is not None and user.role is Role.AGENT else None

    def team_members(self, teams: Iterable[str]) -> list[User]:
        wanted = set(teams)
        return [u for u in self._by_login.values() if u.team in wanted]
