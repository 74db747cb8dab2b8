"""Click-to-call through Asterisk: one AMI Originate per call.

The Originate is the one in the g_click_to_call capture: the agent's phone is
the channel (``Channel: PJSIP/101``), and once he picks up, the dialplan
(``[click-to-call]`` -> ``[outbound]`` in conf/extensions.conf) dials the
customer with the caller ID from ``OUTCID``. ``ChannelId`` is the gateway's
call id: Asterisk makes it the Uniqueid and Linkedid of the agent's channel,
so every event of the call, and its record, carry it. ``__C2C_REQUEST`` (two
underscores: inherited by the customer's channel) names the request in the
PBX's own logs and CDRs.

``Async: true``: Asterisk answers "Originate successfully queued" at once and
reports the outcome later (OriginateResponse, then the call's own events).
The action is sent once; whatever goes wrong is an ``OriginateError`` and nothing
is re-sent, here or by the link.
"""

from __future__ import annotations

import re
from typing import Final

from connectors.ami.link import AmiActionError, AmiLink, AmiLinkLost, AmiTimeout

_NOT_IN_NAME = re.compile(r'[\x00-\x1f\x7f"\\<>]')
MAX_NAME = 40


class OriginateError(Exception):
    """The Originate failed. ``kind`` is the dialer contract's word for it
    (gateway.click_to_call.Dialer): what the agent may do next."""

    REFUSED: Final = "refused"  # Response: Error; ``message`` is Asterisk's Message
    UNAVAILABLE: Final = "unavailable"  # not connected: nothing was sent
    UNCERTAIN: Final = "uncertain"  # sent, unanswered: it may still ring

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def caller_id_text(name: str | None, number: str) -> str:
    """``"name" <number>`` for the agent's phone; the number stands in for a missing name.

    Quotes, angle brackets, backslashes and control characters are dropped
    from the name: they would end the quoted string (or the header).
    """
    shown = " ".join(_NOT_IN_NAME.sub(" ", name or "").split())[:MAX_NAME] or number
    return f'"{shown}" <{number}>'


class AmiDialer:
    """A ``gateway.click_to_call.Dialer`` over an ``AmiLink``.

    ``dial_string`` makes the agent's channel from his extension;
    ``timeout_ms`` is how long his phone rings before Asterisk gives up;
    ``account`` is the CDR account code of these calls; ``action_timeout`` is
    how long to wait for Asterisk to accept the request.
    """

    def __init__(
        self,
        link: AmiLink,
        *,
        context: str = "click-to-call",
        dial_string: str = "PJSIP/{extension}",
        timeout_ms: int = 30_000,
        account: str = "click2call",
        action_timeout: float = 10.0,
    ) -> None:
        if "{extension}" not in dial_string:
            raise ValueError(f'dial_string must contain {{extension}}, like "PJSIP/{{extension}}": {dial_string!r}')
        self.link = link
        self.context = context
        self.dial_string = dial_string
        self.timeout_ms = timeout_ms
        self.account = account
        self.action_timeout = action_timeout

    def originate(
        self,
        *,
        extension: str,
        number: str,
        caller_id: str | None,
        call_id: str,
        request_id: str,
        contact_name: str | None,
    ) -> dict[str, str | list[str]]:
        """The Originate's headers, in the capture's order."""
        variables = [f"OUTCID={caller_id}"] if caller_id else []
        variables.append(f"__C2C_REQUEST={request_id}")
        return {
            "Channel": self.dial_string.replace("{extension}", extension),
            "Context": self.context,
            "Exten": number,
            "Priority": "1",
            "CallerID": caller_id_text(contact_name, number),
            "Timeout": str(self.timeout_ms),
            "Async": "true",
            "ChannelId": call_id,
            "Variable": variables,
            "Account": self.account,
        }

    async def place(
        self,
        *,
        extension: str,
        number: str,
        caller_id: str | None,
        call_id: str,
        request_id: str,
        contact_name: str | None,
    ) -> None:
        if not self.link.is_connected:
            raise OriginateError(OriginateError.UNAVAILABLE,
                                 "the gateway is not connected to the PBX; nothing was sent")
        headers = self.originate(extension=extension, number=number, caller_id=caller_id, call_id=call_id,
                                 request_id=request_id, contact_name=contact_name)
        try:
            await self.link.action("Originate", headers, timeout=self.action_timeout)
        except AmiActionError as exc:
            raise OriginateError(OriginateError.REFUSED, exc.message or "the PBX refused without a reason") from exc
        except AmiLinkLost as exc:
            raise OriginateError(OriginateError.UNCERTAIN, "the link to the PBX was lost before it answered; "
                                 "the call may still be placed") from exc
        except AmiTimeout as exc:
            raise OriginateError(OriginateError.UNCERTAIN, f"the PBX did not answer within "
                                 f"{self.action_timeout:g} s; the call may still be placed") from exc
