"""What the daemon tells the snapshot browser process when sets or objects change.

One job: send the browser its `refresh` request (sets came or went) and its
`forget` request (objects were marked damaged), and wait for the answer.

Invariants:
- Each call returns once the browser has made the kernel forget what it
  cached of the change, so a caller that replies after it (a `snapshot
  create`, `delete` or `prune`) leaves no path showing the old state.
- A browser that is not running, or fails to answer, is logged and never
  fails the caller: the sets themselves are already as the caller made them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shadowfs.daemon.children import CALL_TIMEOUT, Child
from shadowfs.ipc import frames
from shadowfs.ipc.messages import BrowserForgetRequest, BrowserRefreshRequest

log = logging.getLogger(__name__)


class BrowserLink:
    """Requests to the browser process that `browser()` returns (None while there is none)."""

    def __init__(self, browser: Callable[[], Child | None]) -> None:
        self._browser = browser

    async def refresh(self) -> None:
        """Sets came or went: wait until the browser has made the kernel forget what it cached of
        them (a deleted set is then gone from every path at once; design §5.4)."""
        request: BrowserRefreshRequest = {"op": "refresh"}
        await self._tell(request)

    async def forget_damaged(self, volume: str, inos: list[int]) -> None:
        """Objects were marked damaged: the browser drops what the kernel caches of them."""
        request: BrowserForgetRequest = {"op": "forget", "volume": volume, "inos": inos}
        await self._tell(request)

    async def _tell(self, request: BrowserRefreshRequest | BrowserForgetRequest) -> None:
        browser = self._browser()
        if browser is None or browser.channel is None:
            return
        try:
            await browser.channel.call(request, timeout=CALL_TIMEOUT)
        except (frames.RemoteError, frames.CallTimeout, frames.ChannelClosed, OSError) as exc:
            log.error("snapshot browser did not %s: %s", request["op"], exc)


__all__ = ["BrowserLink"]
