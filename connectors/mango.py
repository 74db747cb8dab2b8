"""PLACEHOLDER: being written (issue 7); replaced before this lands."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from connectors.webhook import Account, Decide, Intake, Request
from gateway.events import CallEvent


class MangoConnector:
    def __init__(self, accounts: Sequence[Account], name: str = "mango") -> None:
        self.name = name
        self.accounts = {a.name: a for a in accounts}

    def add_routes(self, app: web.Application, intake: Intake, decide: Decide | None,
                   clock: Callable[[], float]) -> None:
        raise NotImplementedError

    def call_events(self, account: str, history: Sequence[Request]) -> list[CallEvent]:
        raise NotImplementedError
