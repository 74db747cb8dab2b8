"""Who should take this caller? One function for every PBX.

``Router.decide(caller, dialled)`` answers with a ``RouteDecision``; the
Asterisk FastAGI handler turns it into channel variables, cloud-PBX connectors
into their own replies. Rules, in order:

1. outside the shop's working hours (its time zone, holidays): ``after_hours``;
2. a blacklisted caller: ``blacklist``, no route;
3. a VIP contact: his manager first when available, then ``vip_fallback``
   (e.g. the VIP queue): ``vip``;
4. a caller seen within the sticky window (default 90 days) whose assigned
   manager is available: that manager's phone: ``assigned_manager``;
5. otherwise nothing: the PBX's own routing applies (``default``).

Callers of ``decide`` bound it with their own deadline; a slow store makes
the answer late, never wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.numberplan import PlanBook
from gateway.presence import Presence
from gateway.users import Directory


class ContactFacts(Protocol):
    @property
    def manager(self) -> str | None: ...
    @property
    def vip(self) -> bool: ...
    @property
    def blacklisted(self) -> bool: ...
    @property
    def name(self) -> str | None: ...
    @property
    def last_call_at(self) -> float | None: ...


class ContactLookup(Protocol):
    async def manager_for(self, phone: str) -> ContactFacts | None: ...


@dataclass(frozen=True)
class RouteDecision:
    reason: str  # assigned_manager | vip | blacklist | after_hours | default
    route: str | None = None  # a dial string, e.g. PJSIP/103
    fallback: str | None = None  # a dial string or a queue name
    manager: str | None = None  # the login the route leads to
    extension: str | None = None  # ...and his extension (what a cloud PBX redirects to)
    contact_name: str | None = None
    shop: str | None = None
    channel: str | None = None

    def variables(self) -> dict[str, str]:
        """The dialplan's channel variables; nothing at all for ``default``.

        The ad channel goes out twice: as ``CHANNEL`` (the documented name) and
        as ``AD_CHANNEL``, because in Asterisk's dialplan ``${CHANNEL}`` is the
        built-in channel name and hides a variable of that name.
        """
        if self.reason == "default":
            return {}
        values = {"ROUTE": self.route, "ROUTE_FALLBACK": self.fallback, "ROUTE_REASON": self.reason,
                  "CONTACT_NAME": self.contact_name, "SHOP": self.shop, "CHANNEL": self.channel,
                  "AD_CHANNEL": self.channel}
        return {key: value for key, value in values.items() if value}


class Router:
    def __init__(
        self,
        *,
        contacts: ContactLookup,
        plans: PlanBook,
        directory: Directory,
        presence: Presence,
        clock: Callable[[], float],
        normalise: Callable[[str], str | None],
        dial_string: Callable[[str], str] = lambda extension: f"PJSIP/{extension}",
        sticky_days: float = 90.0,
        vip_fallback: str | None = None,
    ) -> None:
        self._contacts = contacts
        self._plans = plans
        self._directory = directory
        self._presence = presence
        self._clock = clock
        self._normalise = normalise
        self._dial_string = dial_string
        self.sticky_seconds = sticky_days * 86400
        self.vip_fallback = vip_fallback

    async def decide(self, caller: str | None, dialled: str | None) -> RouteDecision:
        now = self._clock()
        line = self._plans.at(now).line(dialled)
        shop = line.shop.shop_id if line else None
        channel = line.channel if line else None
        if line is not None and not line.shop.is_open(now):
            return RouteDecision("after_hours", shop=shop, channel=channel)
        phone = self._normalise(caller) if caller else None
        contact = await self._contacts.manager_for(phone) if phone else None
        if contact is None:
            return RouteDecision("default", shop=shop, channel=channel)
        name = contact.name
        if contact.blacklisted:
            return RouteDecision("blacklist", contact_name=name, shop=shop, channel=channel)
        extension = self._available_extension(contact.manager)
        route = self._dial_string(extension) if extension else None
        if contact.vip:
            fallback = self.vip_fallback
            if route is None and fallback is None:
                return RouteDecision("default", contact_name=name, shop=shop, channel=channel)
            return RouteDecision("vip", route=route, fallback=fallback, manager=contact.manager if route else None,
                                 extension=extension, contact_name=name, shop=shop, channel=channel)
        recent = contact.last_call_at is not None and now - contact.last_call_at <= self.sticky_seconds
        if route is not None and recent:
            return RouteDecision("assigned_manager", route=route, manager=contact.manager, extension=extension,
                                 contact_name=name, shop=shop, channel=channel)
        return RouteDecision("default", contact_name=name, shop=shop, channel=channel)

    def _available_extension(self, login: str | None) -> str | None:
        """The extension of the manager's phone when he can take the call now."""
        if login is None:
            return None
        user = self._directory.by_login(login)
        if user is None or not user.extensions or not self._presence.is_available(login):
            return None
        return user.extensions[0]
