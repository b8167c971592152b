"""What every part of an IMAP session shares: its state, the services, the helpers.

`net.imap_server.ImapSession` is assembled from `SessionBase` (this module), the
mailbox commands (`net.imap_mailboxes`) and the message commands
(`net.imap_messages`); one object per connection. State that RFC 9051 makes per
session lives here: the authenticated account, the selected mailbox view
(`imap.selected`), what the client ENABLEd (RFC 5161), CONDSTORE activation (RFC
7162 3.1), the SEARCHRES saved set (RFC 5182).
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from dataclasses import dataclass

from mailward.auth import Authenticator
from mailward.imap.names import (
    BadName,
    from_client,
    to_client,
)
from mailward.imap.selected import SelectedMailbox
from mailward.logs import EventLog
from mailward.message.mime import Part
from mailward.net.smtp_server import MessageSpool
from mailward.net.starttls import note_tls
from mailward.pipeline.types import SessionInfo
from mailward.proto import imap as core_mod
from mailward.proto.imap_wire import (
    list_mailbox_quote,
)
from mailward.proto.sasl import (
    SaslMechanism,
)
from mailward.spam.training import JunkTrainer
from mailward.store.api import (
    MailStore,
    SpecialUse,
)

STREAM_CHUNK = 256 * 1024
NO_RECENT = 2**32  # recent_above for rev2 sessions: \Recent does not exist there
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = (
    core_mod.ImapState.NOT_AUTHENTICATED,
    core_mod.ImapState.AUTHENTICATED,
    core_mod.ImapState.SELECTED,
    core_mod.ImapState.LOGOUT,
)
SPECIAL_USES = {u.value.upper(): u for u in SpecialUse if u.value}


@dataclass(frozen=True, slots=True)
class ImapServices:
    """What every IMAP session shares; built once, not per connection."""

    hostname: str
    tls_context: ssl.SSLContext
    store: MailStore
    authenticator: Authenticator
    log: EventLog
    login_timeout: float  # before authentication
    idle_timeout: float  # RFC 9051 5.4: at least 30 minutes once authenticated
    tls_handshake_timeout: float
    append_limit: int
    poll_interval: float = 10.0  # changes made by other processes are seen this late
    # Bayes training from Junk moves and $Junk / $NotJunk (None: no training).
    trainer: JunkTrainer | None = None


class Refused(Exception):
    """A command ends with this tagged NO (or BAD); the text is safe to show."""

    def __init__(self, text: str, code: str | None = None, status: str = "NO") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


@dataclass(slots=True)
class _Append:
    tag: str
    mailbox: str
    flags: frozenset[str]
    date: datetime.datetime | None
    spool: MessageSpool


class SessionBase:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        services: ImapServices,
        *,
        implicit_tls: bool,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self.svc = services
        self.store = services.store
        self.log = services.log
        self.tls_active = implicit_tls
        self.core = core_mod.ImapServer(
            core_mod.ImapSettings(
                append_limit=services.append_limit, literal_plus=True, tls_active=implicit_tls
            )
        )
        self.account_id: int | None = None
        self.selected: SelectedMailbox | None = None
        self.enabled: set[str] = set()
        self.condstore = False  # RFC 7162 3.1: a CONDSTORE-enabling command was seen
        self.saved: list[int] = []  # RFC 5182 $ (uids)
        self.structure_cache: dict[str, Part] = {}
        self.unwatch: object | None = None
        self.changed = asyncio.Event()
        self.last_poll = 0.0
        self.task: asyncio.Task[None] | None = None
        self.interruptible = False
        self.closing = False
        self.busy_idle: str | None = None  # tag of a running IDLE
        self.sasl: tuple[str, SaslMechanism] | None = None
        self.append: _Append | None = None
        self.read_task: asyncio.Task[bytes] | None = None
        if implicit_tls:
            note_tls(writer, info, services.log)

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled or self.rev2

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    async def flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _sync(self, *, allow_expunge: bool, force: bool = False) -> None:
        """Tell the session what changed in its selected mailbox (RFC 9051 7.5)."""
        sel = self.selected
        if sel is None or self.account_id is None:
            return
        now = time.monotonic()
        if not (force or self.changed.is_set() or now - self.last_poll >= self.svc.poll_interval):
            if allow_expunge and sel.pending_expunge:
                for line in sel.flush_expunges(qresync=self.qresync):
                    self.core.send(line)
            return
        self.last_poll = now
        self.changed.clear()
        changes = await self.store.changes_since(self.account_id, sel.mailbox_id, sel.highestmodseq)
        for line in sel.apply(
            changes,
            allow_expunge=allow_expunge,
            qresync=self.qresync,
            condstore=self.condstore,
            rev2=self.rev2,
        ):
            self.core.send(line)

    def _on_change(self, mailbox_id: int) -> None:
        if self.selected is not None and self.selected.mailbox_id == mailbox_id:
            self.changed.set()

    @property
    def account(self) -> int:
        assert self.account_id is not None
        return self.account_id

    def _name(self, raw: str) -> str:
        try:
            return from_client(raw, utf8=self.utf8)
        except BadName as exc:
            raise Refused(str(exc), status="BAD") from None

    def _wire_name(self, name: str) -> bytes:
        return list_mailbox_quote(to_client(name, utf8=self.utf8))

    def _selected(self) -> SelectedMailbox:
        if self.selected is None:
            raise Refused("No mailbox selected", status="BAD")
        return self.selected

    def _deselect(self) -> None:
        self.selected = None
        self.saved = []
        self.core.set_state(AUTHENTICATED)
