"""IMAP message commands: APPEND (streamed, RFC 7889 APPENDLIMIT, RFC 4315 APPENDUID),
FETCH (RFC 9051 6.4.5, RFC 3516 BINARY, RFC 7162 CHANGEDSINCE/VANISHED), STORE
(UNCHANGEDSINCE), COPY / MOVE (RFC 6851, COPYUID), EXPUNGE / UID EXPUNGE, SEARCH
(ESEARCH RFC 4731, SEARCHRES RFC 5182). Whole-message FETCH streams from the blob in
chunks; APPEND answers OK only after the store made the message durable. APPEND, STORE
and COPY / MOVE tell the Junk trainer (spam/training.py) what the user did, which
trains their Bayes filter in the background, never delaying or failing the command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from mailward.imap import fetch as fetch_mod
from mailward.imap import search as search_mod
from mailward.imap.selected import SelectedMailbox, compress, ranges_of
from mailward.net.imap_base import (
    STREAM_CHUNK,
    Refused,
    SessionBase,
    _Append,
)
from mailward.net.smtp_server import MessageSpool
from mailward.proto import imap as core_mod
from mailward.proto import imap_commands as cmd
from mailward.proto.imap_wire import (
    response,
)
from mailward.store.api import (
    Delivery,
    FlagMode,
    LocalTarget,
    MessageInfo,
    OverQuota,
    StoreError,
)


class MessageCommands(SessionBase):
    def _append_start(self, event: core_mod.AppendStart) -> None:
        # Checks that need no I/O run here; the mailbox is checked at the end.
        if self.account_id is None:
            self.core.reject_literal(response(event.tag, "NO", "Not authenticated"))
            return
        if event.size > self.svc.append_limit:
            self.core.reject_literal(
                response(event.tag, "NO", "Message larger than APPENDLIMIT", "TOOBIG")
            )
            return
        try:
            name = self._name(event.mailbox)
        except Refused as exc:
            self.core.reject_literal(response(event.tag, exc.status, exc.text, exc.code))
            return
        self.append = _Append(
            tag=event.tag,
            mailbox=name,
            flags=frozenset(event.flags),
            date=event.internal_date,
            spool=MessageSpool(self.store.new_spool(), b""),
        )
        self.core.accept_literal()

    async def _append_end(self, tag: str) -> None:
        append, self.append = self.append, None
        if append is None:
            return
        try:
            result = await self._append_store(append)
        except Refused as exc:
            self.core.send(response(tag, exc.status, exc.text, exc.code))
            return
        except OverQuota:
            self.core.send(response(tag, "NO", "Quota exceeded", "OVERQUOTA"))
            return
        except StoreError as exc:
            self.log.error("imap.append_failed", session=self.info.session_id, error=str(exc))
            self.core.send(response(tag, "NO", "Temporary server failure", "UNAVAILABLE"))
            return
        await self._sync(allow_expunge=True)
        self.core.send(response(tag, "OK", "APPEND completed", result))

    async def _append_store(self, append: _Append) -> str:
        content = append.spool.finish()
        mailbox = await self.store.get_mailbox(self.account, append.mailbox)
        if mailbox is None:
            append.spool.discard()
            raise Refused("No such mailbox", "TRYCREATE")
        flags = frozenset(f for f in append.flags if f.lower() != "\\recent")
        receipt = await self.store.deliver(
            Delivery(
                spool=append.spool.path,
                sender="",
                local=[LocalTarget(self.account, mailbox.name, flags, enforce_quota=True)],
                outbound=[],
                internal_date=append.date.timestamp() if append.date else None,
                content=content,
            )
        )
        uid = receipt.stored[0][1]
        self.log.info("imap.append", session=self.info.session_id, mailbox_id=mailbox.id, uid=uid)
        if self.svc.trainer is not None:  # Bayes training, in the background
            self.svc.trainer.on_append(self.account, mailbox, receipt.blob_id, flags)
        return f"APPENDUID {mailbox.uidvalidity} {uid}"

    def _resolve(
        self, sel: SelectedMailbox, seqset: cmd.SequenceSet, uid: bool
    ) -> list[tuple[int, int]]:
        """(seq, uid) of the messages a set names; out-of-range numbers name nothing."""
        if seqset.saved:
            keep = set(self.saved)
            return [(s, u) for s, u in enumerate(sel.uids, 1) if u in keep]
        if not sel.uids:
            return []
        if uid:
            return sel.by_uid(seqset.resolve(sel.uids[-1]))
        return sel.by_sequence(seqset.resolve(len(sel.uids)))

    async def _infos(
        self, sel: SelectedMailbox, pairs: Sequence[tuple[int, int]]
    ) -> list[tuple[int, MessageInfo]]:
        if not pairs:
            return []
        infos = await self.store.fetch_info(
            self.account, sel.mailbox_id, ranges_of([u for _, u in pairs])
        )
        by_uid = {i.uid: i for i in infos}
        return [(s, by_uid[u]) for s, u in pairs if u in by_uid]

    def _with_recent(self, sel: SelectedMailbox, info: MessageInfo) -> MessageInfo:
        if info.uid > sel.recent_above:
            return replace(info, flags=info.flags | {"\\Recent"})
        return info

    async def _do_fetch(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Fetch)
        pairs = self._resolve(sel, args.set, c.uid)
        if args.changedsince is not None:
            self.condstore = True
        if args.vanished:
            if not c.uid or not self.qresync or args.changedsince is None:
                raise Refused("VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE", status="BAD")
            changes = await self.store.changes_since(
                self.account, sel.mailbox_id, args.changedsince
            )
            largest = sel.uidnext - 1
            gone = [u for u in changes.expunged if args.set.contains(u, largest)]
            if gone:
                self.core.send(b"* VANISHED (EARLIER) %s\r\n" % compress(gone).encode())
        messages = await self._infos(sel, pairs)
        if args.changedsince is not None:
            messages = [(s, i) for s, i in messages if i.modseq > args.changedsince]
        items = list(args.items)
        flagged: set[int] = set()
        if fetch_mod.sets_seen(items) and not sel.readonly:
            messages, flagged = await self._mark_seen(sel, messages)
        include_modseq = self.condstore
        need_data = fetch_mod.needs_message(items)
        fast = fetch_mod.metadata_renderer(items, include_uid=c.uid, include_modseq=include_modseq)
        if fast is not None and not flagged:
            await self._fetch_metadata(sel, messages, fast)
            return None, "FETCH completed"
        written = 0
        for seq, info in messages:
            data = await self.store.read_blob(info.blob_id) if need_data else None
            try:
                pieces = fetch_mod.render_fetch(
                    seq,
                    self._with_recent(sel, info),
                    items,
                    data,
                    include_uid=c.uid,
                    include_modseq=include_modseq,
                    include_flags=info.uid in flagged,
                    structure_cache=self.structure_cache,
                )
            except fetch_mod.UnknownCte:
                raise Refused("Unknown content-transfer-encoding", "UNKNOWN-CTE") from None
            written += await self._write_pieces(info, pieces)
            if written > STREAM_CHUNK:  # keep the output buffer bounded on big FETCHes
                await self.flush()
                written = 0
        return None, "FETCH completed"

    async def _fetch_metadata(
        self,
        sel: SelectedMailbox,
        messages: list[tuple[int, MessageInfo]],
        render: Callable[[int, MessageInfo], bytes],
    ) -> None:
        """Index-only FETCH (flags, uids...): no message is read, output in batches."""
        batch: list[bytes] = []
        size = 0
        for seq, info in messages:
            line = render(seq, self._with_recent(sel, info))
            batch.append(line)
            size += len(line)
            if size > STREAM_CHUNK:
                self.core.send(b"".join(batch))
                await self.flush()
                batch, size = [], 0
        self.core.send(b"".join(batch))

    async def _mark_seen(
        self, sel: SelectedMailbox, messages: list[tuple[int, MessageInfo]]
    ) -> tuple[list[tuple[int, MessageInfo]], set[int]]:
        """RFC 9051 6.4.5: fetching a body part sets \\Seen; returns the messages with
        their new flags and the uids whose flags changed (their FLAGS are sent)."""
        unseen = [i.uid for _, i in messages if "\\Seen" not in i.flags]
        if not unseen:
            return messages, set()
        update = await self.store.store_flags(
            self.account, sel.mailbox_id, unseen, FlagMode.ADD, frozenset({"\\Seen"})
        )
        fresh = {i.uid: i for i in update.changed}
        sel.own_modseqs.update(i.modseq for i in update.changed)
        return [(s, fresh.get(i.uid, i)) for s, i in messages], set(fresh)

    async def _write_pieces(self, info: MessageInfo, pieces: Sequence[object]) -> int:
        """Write a FETCH response; blob ranges stream from the file in chunks."""
        total = 0
        for piece in pieces:
            if isinstance(piece, bytes):
                self.core.send(piece)
                total += len(piece)
                continue
            assert isinstance(piece, fetch_mod.BlobRange)
            await self.flush()
            offset, remaining = piece.offset, piece.length
            while remaining > 0:
                chunk = await self.store.read_blob(
                    info.blob_id, offset, min(STREAM_CHUNK, remaining)
                )
                if not chunk:
                    raise StoreError("message file shorter than its index says")
                self.writer.write(chunk)
                await self.writer.drain()
                offset += len(chunk)
                remaining -= len(chunk)
                total += len(chunk)
        return total

    async def _do_store(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Store)
        if sel.readonly:
            raise Refused("Mailbox is read-only", "READ-ONLY")
        if args.unchangedsince is not None:
            self.condstore = True
        pairs = self._resolve(sel, args.set, c.uid)
        flags = frozenset(f for f in args.flags if f.lower() != "\\recent")
        update = await self.store.store_flags(
            self.account,
            sel.mailbox_id,
            [u for _, u in pairs],
            FlagMode(args.mode),
            flags,
            args.unchangedsince,
        )
        for info in update.changed:
            sel.own_modseqs.add(info.modseq)
        if self.svc.trainer is not None:  # $Junk / $NotJunk: Bayes training, in the background
            self.svc.trainer.on_store(self.account, FlagMode(args.mode), flags, update.changed)
        if not args.silent:
            for info in sorted([*update.changed, *update.unchanged], key=lambda i: i.uid):
                seq = sel.seq_of(info.uid)
                if seq:
                    self.core.send(self._store_line(sel, seq, info, c.uid))
        elif self.condstore:
            for info in update.changed:
                seq = sel.seq_of(info.uid)
                if seq:
                    uid_part = b"UID %d " % info.uid if c.uid else b""
                    self.core.send(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid_part, info.modseq))
        if update.modified:
            numbers = (
                sorted(update.modified) if c.uid else sorted(sel.seq_of(u) for u in update.modified)
            )
            return f"MODIFIED {compress(numbers)}", "Conditional STORE failed"
        return None, "STORE completed"

    def _store_line(self, sel: SelectedMailbox, seq: int, info: MessageInfo, uid: bool) -> bytes:
        line = sel.flags_line(seq, info, qresync=False, condstore=self.condstore)
        if uid:
            line = line.replace(b"FETCH (", b"FETCH (UID %d " % info.uid, 1)
        return line

    async def _do_copy(self, c: cmd.Command) -> tuple[str | None, str]:
        return await self._copy_or_move(c, move=False)

    async def _do_move(self, c: cmd.Command) -> tuple[str | None, str]:
        return await self._copy_or_move(c, move=True)

    async def _copy_or_move(self, c: cmd.Command, *, move: bool) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Copy | cmd.Move)
        if move and sel.readonly:
            raise Refused("Mailbox is read-only", "READ-ONLY")
        dest = self._name(args.mailbox)
        target = await self.store.get_mailbox(self.account, dest)
        if target is None:
            raise Refused("No such mailbox", "TRYCREATE")
        pairs = self._resolve(sel, args.set, c.uid)
        verb = "MOVE" if move else "COPY"
        if not pairs:
            return None, f"{verb} completed (nothing to do)"
        uids = [u for _, u in pairs]
        if move:
            result = await self.store.move_messages(self.account, sel.mailbox_id, uids, dest)
        else:
            result = await self.store.copy_messages(self.account, sel.mailbox_id, uids, dest)
        if self.svc.trainer is not None:  # into or out of Junk: Bayes training, in the background
            self.svc.trainer.on_copy(
                self.account, sel.mailbox_id, target, [d for _, d in result.pairs]
            )
        sources = compress([src for src, _ in result.pairs])
        code = f"COPYUID {result.uidvalidity} {sources} {compress([d for _, d in result.pairs])}"
        if not move:
            return code, "COPY completed"
        self.core.send(response(None, "OK", "Moved", code))
        if result.expunge_modseq:
            sel.own_modseqs.add(result.expunge_modseq)
        for line in sel.remove_expunged([s for s, _ in result.pairs], qresync=self.qresync):
            self.core.send(line)
        return None, "MOVE completed"

    async def _do_expunge(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        if sel.readonly:
            raise Refused("Mailbox is read-only", "READ-ONLY")
        uids: list[int] | None = None
        if c.uid:
            assert isinstance(args, cmd.Expunge) and args.uids is not None
            uids = [u for _, u in self._resolve(sel, args.uids, True)]
        gone = await self.store.expunge(self.account, sel.mailbox_id, uids)
        for line in sel.remove_expunged(gone, qresync=self.qresync):
            self.core.send(line)
        if self.condstore:
            mb = await self.store.get_mailbox(self.account, sel.name)
            if mb is not None:
                return f"HIGHESTMODSEQ {mb.highestmodseq}", "EXPUNGE completed"
        return None, "EXPUNGE completed"

    async def _do_search(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Search)
        pairs = [(s, u) for s, u in enumerate(sel.uids, 1)]
        messages = await self._infos(sel, pairs)

        async def load(infos: Sequence[MessageInfo], header_only: bool) -> list[bytes]:
            blob_ids = [info.blob_id for info in infos]
            return await self.store.read_blobs(blob_ids, header_only=header_only)

        matches = await search_mod.search(
            args.key,
            [(s, self._with_recent(sel, i)) for s, i in messages],
            load,
            recent_above=sel.recent_above,
            saved=self.saved,
        )
        uses_modseq = search_mod.uses_modseq(args.key)
        if uses_modseq:
            self.condstore = True
        modseq = max((i.modseq for _, i in matches), default=0) if uses_modseq else None
        numbers = [i.uid if c.uid else s for s, i in matches]
        returns = args.returns
        if returns is not None and "SAVE" in (r.upper() for r in returns):
            self.saved = [i.uid for _, i in matches]  # RFC 5182
        if returns is not None or self.rev2:
            out = search_mod.esearch_response(
                c.tag, numbers, tuple(returns or ()), uid=c.uid, modseq=modseq or None
            )
            if out:
                self.core.send(out)
        else:
            self.core.send(search_mod.search_response(numbers, modseq or None))
        return None, "SEARCH completed"
