"""IMAP mailbox commands: SELECT/EXAMINE, CLOSE/UNSELECT, CREATE, DELETE, RENAME,
SUBSCRIBE/UNSUBSCRIBE, LIST (RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154
SPECIAL-USE), LSUB, NAMESPACE (RFC 2342), STATUS (RFC 8438 SIZE), GETQUOTA /
GETQUOTAROOT (RFC 9208); RFC 9051 6.3. Names go through `imap.names`: data, never
paths, and every store call carries the session's account id.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections.abc import Sequence

from mailward.imap.names import (
    BadName,
    ListQuery,
    check_new_name,
    list_entries,
    parents,
    pattern_regex,
)
from mailward.imap.selected import SelectedMailbox, compress
from mailward.net.imap_base import (
    NO_RECENT,
    SELECTED,
    SPECIAL_USES,
    SYSTEM_FLAGS,
    Refused,
    SessionBase,
)
from mailward.proto import imap_commands as cmd
from mailward.proto.imap_wire import (
    response,
)
from mailward.store.api import (
    AlreadyExists,
    NotFound,
    SpecialUse,
)


class MailboxCommands(SessionBase):
    async def _do_select(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Select)
        if self.selected is not None:
            self._deselect()
            if self.qresync or self.rev2:
                self.core.send(response(None, "OK", "Previous mailbox closed", "CLOSED"))
        name = self._name(args.mailbox)
        if args.condstore or args.qresync is not None:
            if args.qresync is not None and not self.qresync:
                raise Refused("QRESYNC is not enabled", status="BAD")
            self.condstore = True
        status = await self.store.mailbox_status(self.account, name)
        mb = status.mailbox
        readonly = args.readonly
        if self.rev2:
            recent_above = NO_RECENT
        elif readonly:
            recent_above = mb.uidnext - 1 - status.recent
        else:
            recent_above = await self.store.mark_recent(self.account, mb.id)
        uids = await self.store.list_uids(self.account, mb.id)
        sel = SelectedMailbox(
            mailbox_id=mb.id,
            name=mb.name,
            uidvalidity=mb.uidvalidity,
            readonly=readonly,
            uids=array("I", uids),
            highestmodseq=mb.highestmodseq,
            recent_above=recent_above,
            uidnext=mb.uidnext,
        )
        send = self.core.send
        send(b"* %d EXISTS\r\n" % len(uids))
        if not self.rev2:
            send(b"* %d RECENT\r\n" % sum(1 for u in uids if u > recent_above))
        send(b"* FLAGS (" + " ".join(SYSTEM_FLAGS).encode() + b")\r\n")
        permanent = "" if readonly else " ".join(SYSTEM_FLAGS) + " \\*"
        send(response(None, "OK", "Flags permitted", f"PERMANENTFLAGS ({permanent})"))
        if status.first_unseen_uid and not self.rev2:
            seq = sel.seq_of(status.first_unseen_uid)
            if seq:
                send(response(None, "OK", "First unseen", f"UNSEEN {seq}"))
        send(response(None, "OK", "UIDs valid", f"UIDVALIDITY {mb.uidvalidity}"))
        send(response(None, "OK", "Predicted next UID", f"UIDNEXT {mb.uidnext}"))
        send(response(None, "OK", "Highest", f"HIGHESTMODSEQ {mb.highestmodseq}"))
        if self.rev2:
            send(b'* LIST () "/" ' + self._wire_name(mb.name) + b"\r\n")
        if args.qresync is not None and args.qresync.uidvalidity == mb.uidvalidity:
            await self._qresync_select(sel, args.qresync)
        self.selected = sel
        self.last_poll = time.monotonic()
        self.core.set_state(SELECTED)
        return ("READ-ONLY" if readonly else "READ-WRITE"), (
            "EXAMINE completed" if readonly else "SELECT completed"
        )

    async def _qresync_select(self, sel: SelectedMailbox, q: cmd.Qresync) -> None:
        """RFC 7162 3.2.5.2: report what changed since the client's modseq."""
        changes = await self.store.changes_since(self.account, sel.mailbox_id, q.modseq)
        known = q.known_uids
        vanished = [
            u for u in changes.expunged if known is None or known.contains(u, sel.uidnext - 1)
        ]
        if vanished:
            self.core.send(b"* VANISHED (EARLIER) %s\r\n" % compress(vanished).encode())
        for info in changes.changed:
            seq = sel.seq_of(info.uid)
            if seq:
                self.core.send(sel.flags_line(seq, info, qresync=True, condstore=True))

    async def _do_examine(self, c: cmd.Command) -> tuple[str | None, str]:
        return await self._do_select(c)

    async def _do_close(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        if not sel.readonly:
            await self.store.expunge(self.account, sel.mailbox_id)
        self._deselect()
        return None, "CLOSE completed"

    async def _do_unselect(self, c: cmd.Command) -> tuple[str | None, str]:
        self._selected()
        self._deselect()
        return None, "UNSELECT completed"

    async def _do_create(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Create)
        try:
            name = check_new_name(self._name(args.mailbox))
        except BadName as exc:
            raise Refused(str(exc), "CANNOT") from None
        if name == "INBOX":
            raise Refused("INBOX always exists", "ALREADYEXISTS")
        use = SpecialUse.NONE
        for attr in args.special_use:
            if attr.upper() not in SPECIAL_USES or use is not SpecialUse.NONE:
                raise Refused("Unsupported special-use attribute", "USEATTR")
            use = SPECIAL_USES[attr.upper()]
        existing = {m.name for m in await self.store.list_mailboxes(self.account)}
        if name in existing:
            raise Refused("Mailbox already exists", "ALREADYEXISTS")
        for parent in parents(name):  # RFC 9051 6.3.4: create the superiors too
            if parent not in existing:
                with contextlib.suppress(AlreadyExists):
                    await self.store.create_mailbox(self.account, parent)
        await self.store.create_mailbox(self.account, name, use)
        return None, "CREATE completed"

    async def _do_delete(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Delete)
        name = self._name(args.mailbox)
        if name == "INBOX":
            raise Refused("INBOX cannot be deleted", "CANNOT")
        if self.selected is not None and self.selected.name == name:
            self._deselect()
        await self.store.delete_mailbox(self.account, name)
        return None, "DELETE completed"

    async def _do_rename(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Rename)
        old = self._name(args.old)
        try:
            new = check_new_name(self._name(args.new))
        except BadName as exc:
            raise Refused(str(exc), "CANNOT") from None
        if new == "INBOX":
            raise Refused("Cannot rename to INBOX", "ALREADYEXISTS")
        await self.store.rename_mailbox(self.account, old, new)
        return None, "RENAME completed"

    async def _do_subscribe(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Subscribe)
        await self.store.subscribe(self.account, self._name(args.mailbox))
        return None, "SUBSCRIBE completed"

    async def _do_unsubscribe(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Unsubscribe)
        try:
            await self.store.unsubscribe(self.account, self._name(args.mailbox))
        except NotFound:
            raise Refused("Not subscribed", "NONEXISTENT") from None
        return None, "UNSUBSCRIBE completed"

    async def _do_namespace(self, c: cmd.Command) -> tuple[str | None, str]:
        self.core.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return None, "NAMESPACE completed"

    async def _do_list(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.List)
        selection = {s.upper() for s in args.selection}
        returns = {r.upper() for r in args.returns if isinstance(r, str)}
        status_items = args.status_items
        reference = self._name(args.reference) if args.reference else ""
        if args.patterns == ("",):
            # RFC 9051 6.3.9: the hierarchy delimiter and root name.
            self.core.send(b'* LIST (\\Noselect) "/" ""\r\n')
            return None, "LIST completed"
        regexes = tuple(pattern_regex(reference, self._name(p) if p else p) for p in args.patterns)
        await self._list(
            "LIST",
            ListQuery(
                patterns=regexes,
                subscribed_only="SUBSCRIBED" in selection,
                special_use_only="SPECIAL-USE" in selection,
                recursive_match="RECURSIVEMATCH" in selection,
                return_subscribed="SUBSCRIBED" in returns,
                rev2=self.rev2 or bool(selection or returns),
            ),
            status_items,
        )
        return None, "LIST completed"

    async def _do_lsub(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Lsub)
        reference = self._name(args.reference) if args.reference else ""
        regex = pattern_regex(reference, self._name(args.pattern) if args.pattern else "")
        query = ListQuery(patterns=(regex,), subscribed_only=True, rev2=False)
        await self._list("LSUB", query, ())
        return None, "LSUB completed"

    async def _list(self, kind: str, query: ListQuery, status_items: Sequence[str]) -> None:
        mailboxes = await self.store.list_mailboxes(self.account)
        subscribed = set(await self.store.list_subscriptions(self.account))
        roles = {m.name: m.special_use.value for m in mailboxes if m.special_use.value}
        entries = list_entries((m.name for m in mailboxes), roles, subscribed, query)
        existing = {m.name for m in mailboxes}
        for entry in entries:
            attrs = entry.attributes
            if kind == "LSUB":
                attrs = tuple(a for a in attrs if a in ("\\Noselect",))
            line = b'* %s (%s) "/" %s' % (
                kind.encode(),
                " ".join(attrs).encode(),
                self._wire_name(entry.name),
            )
            if entry.child_subscribed:
                line += b' ("CHILDINFO" ("SUBSCRIBED"))'
            self.core.send(line + b"\r\n")
            if status_items and entry.name in existing:
                await self._status_line(entry.name, status_items)

    async def _do_status(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Status)
        name = self._name(args.mailbox)
        await self._status_line(name, args.items)
        return None, "STATUS completed"

    async def _status_line(self, name: str, items: Sequence[str]) -> None:
        st = await self.store.mailbox_status(self.account, name)
        mb = st.mailbox
        values = {
            "MESSAGES": mb.message_count,
            "UIDNEXT": mb.uidnext,
            "UIDVALIDITY": mb.uidvalidity,
            "UNSEEN": st.unseen,
            "DELETED": st.deleted,
            "SIZE": st.size,
            "RECENT": 0 if self.rev2 else st.recent,
            "HIGHESTMODSEQ": mb.highestmodseq,
            "APPENDLIMIT": self.svc.append_limit,
        }
        out = [f"{item.upper()} {values[item.upper()]}" for item in items if item.upper() in values]
        if any(item.upper() == "HIGHESTMODSEQ" for item in items):
            self.condstore = True
        self.core.send(
            b"* STATUS " + self._wire_name(mb.name) + b" (" + " ".join(out).encode() + b")\r\n"
        )

    async def _quota_lines(self) -> None:
        quota = await self.store.get_quota(self.account)
        if quota.limit:
            used_kib, limit_kib = -(-quota.used // 1024), quota.limit // 1024
            self.core.send(b'* QUOTA "" (STORAGE %d %d)\r\n' % (used_kib, limit_kib))
        else:
            self.core.send(b'* QUOTA "" ()\r\n')

    async def _do_getquotaroot(self, c: cmd.Command) -> tuple[str | None, str]:
        name = self._name(getattr(c.args, "mailbox", ""))
        if await self.store.get_mailbox(self.account, name) is None:
            raise Refused("No such mailbox", "NONEXISTENT")
        self.core.send(b"* QUOTAROOT " + self._wire_name(name) + b' ""\r\n')
        await self._quota_lines()
        return None, "GETQUOTAROOT completed"

    async def _do_getquota(self, c: cmd.Command) -> tuple[str | None, str]:
        if getattr(c.args, "root", "") != "":
            raise Refused("No such quota root", "NONEXISTENT")
        await self._quota_lines()
        return None, "GETQUOTA completed"
