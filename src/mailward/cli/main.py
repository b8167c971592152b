"""The `mailward` command line: parse arguments, call `mailward.admin` / `app`, render.

Thin on purpose (DESIGN.md 1): rules live in `admin.py`; this module only maps
arguments to calls and results to text. Exit status: 0 success; 2 usage,
configuration or validation error (one line "mailward: error: ..." on stderr);
1 any other failure. `--data` defaults to $MAILWARD_DATA.

Secrets: a password is read from one stdin line (--password-stdin) or generated and
printed exactly once, as the last stdout line "password: <pw>"; it is never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from mailward import __version__, admin
from mailward.admin import AdminError, Hasher, OperationFailed
from mailward.config.schema import Config
from mailward.store.api import AlreadyExists, NotFound, StoreError

T = TypeVar("T")
Handler = Callable[[argparse.Namespace, "Context"], int]


class UsageError(Exception):
    """Bad command line: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


class Context:
    """What handlers need from outside: injectable for tests (DESIGN.md principle 5)."""

    def __init__(self, password_hasher: Hasher | None = None) -> None:
        self._hasher = password_hasher

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)

    async def with_hasher(self, use: Callable[[Hasher], Coroutine[Any, Any, T]]) -> T:
        if self._hasher is not None:
            return await use(self._hasher)
        from mailward.crypto.passwords import PasswordHasher

        hasher = PasswordHasher(workers=1)
        try:
            return await use(hasher)
        finally:
            hasher.close()


def _out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers


def _data_dir(args: argparse.Namespace) -> Path:
    value = args.data or os.environ.get("MAILWARD_DATA", "")
    if not value:
        raise UsageError("--data DIR is required (or set MAILWARD_DATA)")
    return Path(value)


def _initialised(args: argparse.Namespace) -> Path:
    data_dir = _data_dir(args)
    admin.require_data_dir(data_dir)
    return data_dir


def _load(data_dir: Path) -> Config:
    from mailward.config.load import load_config

    return load_config(admin.config_path(data_dir))


def _read_password(args: argparse.Namespace) -> str | None:
    if not args.password_stdin:
        return None
    if sys.stdin.isatty():  # a person typing: do not echo it
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise AdminError("no password on standard input")
    return password


def _zone_value(rtype: str, value: str) -> str:
    if rtype != "TXT":
        return value
    # RFC 1035 character-strings are at most 255 octets; long TXT values are split.
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def _print_records(domain: str, records: list[tuple[str, str, str]]) -> None:
    _out(f"DNS records to publish for {domain}:")
    for name, rtype, value in records:
        _out(f"  {name.rstrip('.')}. 3600 IN {rtype} {_zone_value(rtype, value)}")


# --------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _data_dir(args)
    result = ctx.run(
        admin.init_data_dir(
            data_dir,
            args.domain,
            hostname=args.hostname,
            port_offset=args.port_offset,
            listen=args.listen,
            cert=args.cert,
            key=args.key,
        )
    )
    config = result.config
    _out(f"initialised {data_dir} for {args.domain.lower()} as {config.server.hostname}")
    if result.cert_generated:
        _out(
            f"TLS: self-signed certificate for {config.server.hostname}, localhost in "
            f"{config.tls.cert}; replace it with a CA-issued one before going live"
        )
    else:
        _out(f"TLS: installed {config.tls.cert} and {config.tls.key} (mode 0600)")
    address = config.listen.address or "all addresses"
    _out(f"listeners on {address}:")
    for name, port in result.ports:
        _out(f"  {name:<12} {port}")
    _print_records(args.domain.lower(), result.records)
    _out(f"next: mailward user add you@{args.domain.lower()} --data {data_dir}")
    return 0


def cmd_user_add(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    password = _read_password(args)

    async def go() -> admin.AddUserResult:
        async with admin.opened_store(data_dir) as store:
            return await ctx.with_hasher(lambda h: admin.add_user(store, h, args.address, password))

    result = ctx.run(go())
    _out(f"added user {result.address}")
    if result.postmaster_alias:
        _out(
            f"{result.postmaster_alias} now delivers to {result.address} "
            "(RFC 5321 4.5.1: every domain needs a postmaster)"
        )
    if result.generated_password is not None:
        _out(f"password: {result.generated_password}")
    return 0


def cmd_user_list(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)

    async def go() -> list[admin.UserInfo]:
        async with admin.opened_store(data_dir) as store:
            return await admin.list_users(store)

    for user in ctx.run(go()):
        created = time.strftime("%Y-%m-%d", time.gmtime(user.created))
        aliases = f"  aliases: {', '.join(user.aliases)}" if user.aliases else ""
        _out(f"{user.address}  created {created}{aliases}")
    return 0


def cmd_user_del(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)

    async def go() -> list[str]:
        async with admin.opened_store(data_dir) as store:
            return await admin.delete_user(store, args.address)

    removed = ctx.run(go())
    _out(f"deleted user {args.address.lower()} and all its mail")
    for alias in removed:
        _out(f"removed alias {alias}")
    if any(a.startswith("postmaster@") for a in removed):
        _err("mailward: warning: a domain now has no postmaster; add an alias (RFC 5321 4.5.1)")
    return 0


def cmd_user_quota(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    limit = None if args.size is None else admin.parse_size(args.size)

    async def go() -> tuple[int, int]:
        async with admin.opened_store(data_dir) as store:
            return await admin.user_quota(store, args.address, limit)

    used, current = ctx.run(go())
    shown = admin.format_size(current) if current else "unlimited"
    _out(f"{args.address.lower()}: {admin.format_size(used)} used, quota {shown}")
    return 0


def cmd_user_passwd(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    password = _read_password(args)

    async def go() -> str | None:
        async with admin.opened_store(data_dir) as store:
            return await ctx.with_hasher(
                lambda h: admin.set_password(store, h, args.address, password)
            )

    generated = ctx.run(go())
    _out(f"password changed for {args.address.lower()}")
    if generated is not None:
        _out(f"password: {generated}")
    return 0


def cmd_alias_add(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)

    async def go() -> str:
        async with admin.opened_store(data_dir) as store:
            return await admin.add_alias(store, args.alias, args.target)

    _out(f"{ctx.run(go())} now delivers to {args.target.lower()}")
    return 0


def cmd_alias_del(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)

    async def go() -> None:
        async with admin.opened_store(data_dir) as store:
            await admin.delete_alias(store, args.alias)

    ctx.run(go())
    _out(f"deleted alias {args.alias.lower()}")
    return 0


def cmd_alias_list(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)

    async def go() -> list[tuple[str, str]]:
        async with admin.opened_store(data_dir) as store:
            return await admin.list_aliases(store)

    for alias, target in ctx.run(go()):
        _out(f"{alias} -> {target}")
    return 0


def cmd_domain_add(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    hostname = _load(data_dir).server.hostname

    async def go() -> list[tuple[str, str, str]]:
        async with admin.opened_store(data_dir) as store:
            return await admin.add_domain(store, data_dir, args.domain, hostname)

    records = ctx.run(go())
    domain = admin.check_domain(args.domain)
    _out(f"added domain {domain}")
    _print_records(domain, records)
    _out(f"next: mailward user add you@{domain} --data {data_dir}")
    return 0


def cmd_domain_list(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)

    async def go() -> list[str]:
        async with admin.opened_store(data_dir) as store:
            return await admin.list_domains(store)

    for domain in ctx.run(go()):
        _out(domain)
    return 0


def cmd_dns(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    config = _load(data_dir)

    async def go() -> admin.DnsPlan:
        async with admin.opened_store(data_dir) as store:
            return await admin.dns_plan(store, data_dir, args.domain, config)

    plan = ctx.run(go())
    if args.json:
        data = {
            "domain": plan.domain,
            "hostname": plan.hostname,
            "records": [
                {"purpose": r.purpose, "name": r.name, "type": r.rtype, "value": r.value}
                for r in plan.records
            ],
            "mta_sts_policy": {"url": plan.mta_sts_url, "content": plan.mta_sts_policy},
            "notes": plan.notes,
        }
        _out(json.dumps(data, indent=2))
        return 0
    rows = [(r.purpose, f"{r.name}.", r.rtype, _zone_value(r.rtype, r.value)) for r in plan.records]
    widths = [
        max(len(row[i]) for row in [("PURPOSE", "NAME", "TYPE", ""), *rows]) for i in range(3)
    ]
    _out(f"DNS records to publish for {plan.domain} (TTL 3600 is a good default):")
    _out()
    for purpose, name, rtype, value in [("PURPOSE", "NAME", "TYPE", "VALUE"), *rows]:
        cells = [purpose.ljust(widths[0]), name.ljust(widths[1]), rtype.ljust(widths[2]), value]
        _out("  ".join(cells))
    _out()
    _out(f"MTA-STS policy file, to serve at {plan.mta_sts_url}:")
    _out()
    for line in plan.mta_sts_policy.splitlines():
        _out(f"    {line}")
    _out()
    _out("notes:")
    for note in plan.notes:
        _out(f"  - {note}")
    return 0


def cmd_dkim_rotate(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)

    async def go() -> admin.RotateResult:
        async with admin.opened_store(data_dir) as store:
            return await admin.rotate_dkim(store, data_dir, args.domain)

    result = ctx.run(go())
    _out(
        f"new DKIM keys for {result.domain}: signing with {', '.join(result.selectors)} from now on"
    )
    _print_records(result.domain, [(r.name, r.rtype, r.value) for r in result.records])
    _out(
        "publish them now: until they are visible, receivers cannot verify the new "
        "signatures (SPF still passes for mail sent directly)"
    )
    if result.retired:
        _out("older keys kept, so mail they signed still verifies; keep their records too,")
        _out("and after a week delete these files and their DNS records:")
        for path in result.retired:
            _out(f"  {path}")
    return 0


def cmd_config_show(args: argparse.Namespace, ctx: Context) -> int:
    from mailward.config.load import config_as_dict, render_toml

    config = _load(_initialised(args))
    if args.json:
        _out(json.dumps(config_as_dict(config), indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_toml(config))
    return 0


def cmd_config_set(args: argparse.Namespace, ctx: Context) -> int:
    from mailward.config.load import config_as_dict, set_key

    path = admin.require_data_dir(_data_dir(args))
    config = set_key(path, args.key, args.value)
    section, _, key = args.key.partition(".")
    value = config_as_dict(config)[section][key]
    _out(f"{args.key} = {json.dumps(value)}")
    _out("restart mailward serve for the change to take effect")
    return 0


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    sys.stdout.flush()
    out = sys.stdout.buffer

    async def go() -> int:
        async with admin.opened_store(data_dir) as store:
            return await admin.export_mailbox(store, args.address, args.mailbox, out)

    count = ctx.run(go())
    _err(f"mailward: exported {count} message{'s' * (count != 1)} from {args.mailbox}")
    return 0


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    data_dir = _initialised(args)
    max_size = _load(data_dir).limits.message_size
    source: Path = args.source
    if not source.exists():
        raise AdminError(f"{source}: no such file or directory")
    console = Console(file=sys.stderr)
    bar = Progress(
        TextColumn("importing"),
        BarColumn(),
        TaskProgressColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )

    def problem(label: str, why: str) -> None:
        console.print(
            f"mailward: skipped {label}: {why}", markup=False, highlight=False, soft_wrap=True
        )

    async def go() -> admin.ImportResult:
        task = bar.add_task("import", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        async with admin.opened_store(data_dir) as store:
            return await admin.import_messages(
                store,
                args.address,
                source,
                args.mailbox,
                max_size=max_size,
                progress=progress,
                problem=problem,
            )

    with bar:
        result = ctx.run(go())
    skipped = len(result.skipped)
    _out(
        f"imported {result.imported} message{'s' * (result.imported != 1)} into "
        f"{args.address.lower()} {args.mailbox}"
        + (f"; skipped {skipped} malformed (see above)" if skipped else "")
    )
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def _queue_store(args: argparse.Namespace, ctx: Context, use: Callable[[Any], Any]) -> Any:
    data_dir = _initialised(args)

    async def go() -> Any:
        async with admin.opened_store(data_dir) as store:
            return await use(store)

    return ctx.run(go())


def cmd_queue_list(args: argparse.Namespace, ctx: Context) -> int:
    entries = _queue_store(args, ctx, admin.queue_list)
    if args.json:
        rows = [
            {
                "id": e.id,
                "state": e.state.value,
                "sender": e.sender,
                "recipient": e.recipient,
                "attempts": e.attempts,
                "created": e.created,
                "next_attempt": e.next_attempt,
                "last_error": e.last_error,
            }
            for e in entries
        ]
        _out(json.dumps(rows, indent=2))
        return 0
    if not entries:
        _out("the outbound queue is empty")
        return 0
    for e in entries:
        _out(
            f"{e.id}  {e.state.value:<10}  <{e.sender}> -> <{e.recipient}>  "
            f"tries {e.attempts}  next {_when(e.next_attempt)}"
        )
        if e.last_error:
            _out(f"    last error: {e.last_error}")
    _out(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    return 0


def cmd_queue_show(args: argparse.Namespace, ctx: Context) -> int:
    entry_id = admin.parse_queue_id(args.id)
    detail = _queue_store(args, ctx, lambda store: admin.queue_show(store, entry_id))
    e = detail.entry
    _out(f"id:           {e.id}")
    _out(f"state:        {e.state.value}")
    _out(f"sender:       <{e.sender}>")
    _out(f"recipient:    <{e.recipient}>")
    _out(f"queued:       {_when(e.created)}")
    _out(f"attempts:     {e.attempts}")
    _out(f"last attempt: {_when(e.last_attempt)}")
    _out(f"next attempt: {_when(e.next_attempt)}")
    _out(f"delay warned: {'yes' if e.warned else 'no'}")
    _out(f"last error:   {e.last_error or '-'}")
    for name, value in detail.headers:
        _out(f"{name}: {value}")
    return 0


def cmd_queue_retry(args: argparse.Namespace, ctx: Context) -> int:
    entry_id = admin.parse_queue_id(args.id)
    _queue_store(args, ctx, lambda store: admin.queue_retry(store, entry_id))
    _out(f"queue entry {entry_id} is due now (a running server tries it within seconds)")
    return 0


def cmd_queue_delete(args: argparse.Namespace, ctx: Context) -> int:
    entry_id = admin.parse_queue_id(args.id)
    e = _queue_store(args, ctx, lambda store: admin.queue_delete(store, entry_id))
    _out(f"deleted queue entry {e.id} (<{e.sender}> -> <{e.recipient}>); no DSN was sent")
    return 0


def cmd_quarantine_list(args: argparse.Namespace, ctx: Context) -> int:
    entries = _queue_store(args, ctx, admin.quarantine_list)
    if args.json:
        rows = [
            {
                "id": e.id,
                "check": e.check,
                "reason": e.reason,
                "sender": e.sender,
                "local_accounts": list(e.local_accounts),
                "outbound": list(e.outbound),
                "size": e.size,
                "created": e.created,
            }
            for e in entries
        ]
        _out(json.dumps(rows, indent=2))
        return 0
    if not entries:
        _out("the quarantine is empty")
        return 0
    for e in entries:
        _out(f"{e.id}  {_when(e.created)}  {e.check:<12} <{e.sender}>  {e.size} bytes")
        _out(f"    reason: {e.reason}")
    _out(f"{len(entries)} held message{'s' * (len(entries) != 1)}")
    return 0


def cmd_quarantine_show(args: argparse.Namespace, ctx: Context) -> int:
    entry_id = admin.parse_quarantine_id(args.id)
    if args.raw:
        data = _queue_store(args, ctx, lambda store: admin.quarantine_message(store, entry_id))
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    detail = _queue_store(args, ctx, lambda store: admin.quarantine_show(store, entry_id))
    e = detail.entry
    _out(f"id:        {e.id}")
    _out(f"held:      {_when(e.created)}")
    _out(f"check:     {e.check}")
    _out(f"reason:    {e.reason}")
    _out(f"sender:    <{e.sender}>")
    _out(f"for:       {len(e.local_accounts)} local account(s), {len(e.outbound)} remote")
    _out(f"size:      {e.size} bytes")
    for name, value in detail.headers:
        _out(f"{name}: {value}")
    return 0


def cmd_quarantine_release(args: argparse.Namespace, ctx: Context) -> int:
    entry_id = admin.parse_quarantine_id(args.id)
    receipt = _queue_store(args, ctx, lambda store: admin.quarantine_release(store, entry_id))
    _out(
        f"released {entry_id}: stored for {len(receipt.stored)} local recipient(s), "
        f"queued for {len(receipt.queued)} remote"
    )
    return 0


def cmd_quarantine_delete(args: argparse.Namespace, ctx: Context) -> int:
    entry_id = admin.parse_quarantine_id(args.id)
    _queue_store(args, ctx, lambda store: admin.quarantine_delete(store, entry_id))
    _out(f"deleted quarantined message {entry_id}")
    return 0


def cmd_spam_train(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    if args.from_mailboxes:

        async def from_mailboxes() -> tuple[admin.SpamTrainResult, admin.SpamTrainResult]:
            async with admin.opened_store(data_dir) as store:
                return await admin.spam_train_mailboxes(store, args.address, limit=args.limit)

        spam, ham = ctx.run(from_mailboxes())
        shown: list[tuple[str, str, admin.SpamTrainResult]] = [
            ("spam", "Junk", spam),
            ("ham", "INBOX and Archive", ham),
        ]
        for label, where, done in shown:
            _out(
                f"trained {done.trained} message{'s' * (done.trained != 1)} from {where} as "
                f"{label} ({done.unchanged} already trained)"
            )
        return 0
    files: list[Path] = args.spam or args.ham
    max_size = _load(data_dir).limits.message_size
    label = "spam" if args.spam else "ham"

    def problem(where: str, why: str) -> None:
        _err(f"mailward: skipped {where}: {why}")

    async def from_files() -> admin.SpamTrainResult:
        async with admin.opened_store(data_dir) as store:
            return await admin.spam_train_files(
                store,
                args.address,
                files,
                spam=bool(args.spam),
                max_size=max_size,
                problem=problem,
            )

    result = ctx.run(from_files())
    skipped = len(result.skipped)
    _out(
        f"trained {result.trained} message{'s' * (result.trained != 1)} as {label} for "
        f"{args.address.lower()} ({result.unchanged} already trained)"
        + (f"; skipped {skipped} (see above)" if skipped else "")
    )
    return 0


def cmd_spam_status(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = _initialised(args)
    spam_config = _load(data_dir).spam

    async def go() -> admin.SpamStatus:
        async with admin.opened_store(data_dir) as store:
            return await admin.spam_status(
                store,
                args.address,
                enabled=spam_config.bayes,
                min_trained=spam_config.bayes_min_trained,
            )

    status = ctx.run(go())
    if args.json:
        row = {
            "address": status.address,
            "spam": status.spam,
            "ham": status.ham,
            "min_trained": status.min_trained,
            "enabled": status.enabled,
            "active": status.active,
        }
        _out(json.dumps(row, indent=2))
        return 0
    _out(f"{status.address}: trained {status.spam} spam, {status.ham} ham")
    if status.active:
        _out("Bayes filter: active")
    elif not status.enabled:
        _out("Bayes filter: off (spam.bayes = false)")
    else:
        _out(
            f"Bayes filter: learning (needs at least {status.min_trained} spam and "
            f"{status.min_trained} ham)"
        )
    return 0


def cmd_serve(args: argparse.Namespace, ctx: Context) -> int:
    from mailward import app

    return app.serve(_initialised(args))


# --------------------------------------------------------------------------- parser

_FORMAT = argparse.RawDescriptionHelpFormatter


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--data",
        metavar="DIR",
        help="data directory (default: $MAILWARD_DATA)",
    )
    parser = _Parser(
        prog="mailward",
        formatter_class=_FORMAT,
        description=(
            "mailward: a secure-by-default mail server (SMTP, submission, IMAP, POP3).\n"
            "Everything lives in one data directory: configuration, TLS and DKIM keys,\n"
            "the mail store. Start with `mailward init`, add users, then `mailward serve`."
        ),
        epilog=_examples(
            "mailward init --data /var/lib/mailward --domain example.org",
            "mailward user add alice@example.org --data /var/lib/mailward",
            "export MAILWARD_DATA=/var/lib/mailward; mailward serve",
            "mailward <command> --help   (details of one command)",
        ),
    )
    parser.add_argument("--version", action="version", version=f"mailward {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        parent: Any, name: str, handler: Handler, summary: str, description: str, *examples: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description,
            epilog=_examples(*examples),
            formatter_class=_FORMAT,
        )
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, summary: str, description: str) -> Any:
        sub = commands.add_parser(
            name, help=summary, description=description, formatter_class=_FORMAT
        )
        return sub.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = command(
        commands,
        "init",
        cmd_init,
        "create a data directory for a domain",
        "Create DIR (mode 0700) with mailward.toml, a TLS certificate (self-signed for\n"
        "the host name and localhost unless --cert/--key are given), the mail store with\n"
        "DOMAIN, and DKIM keys; then print the DNS records to publish and the ports.\n"
        "Refuses if DIR/mailward.toml exists.",
        "mailward init --data /var/lib/mailward --domain example.org",
        "mailward init --data ./dev --domain example.test --port-offset 10000 --listen 127.0.0.1",
        "mailward init --data DIR --domain example.org --cert fullchain.pem --key privkey.pem",
    )
    p.add_argument("--domain", required=True, help="the first mail domain, e.g. example.org")
    p.add_argument("--hostname", help="this server's name (default: mail.DOMAIN)")
    p.add_argument(
        "--port-offset", type=int, default=0, metavar="N", help="added to every standard port"
    )
    p.add_argument("--listen", default="", metavar="ADDR", help="IP address to bind (default all)")
    p.add_argument("--cert", type=Path, metavar="FILE", help="PEM certificate chain to install")
    p.add_argument("--key", type=Path, metavar="FILE", help="PEM private key to install (0600)")

    users = group("user", "add, list, delete users; set passwords", "Manage mail accounts.")
    p = command(
        users,
        "add",
        cmd_user_add,
        "add a user",
        "Add an account in a local domain. The password is read from one line of\n"
        "standard input with --password-stdin; otherwise one is generated and printed\n"
        "once as the last line, 'password: ...'. Weak passwords are refused. The first\n"
        "user of a domain also receives postmaster@ mail (RFC 5321 4.5.1).",
        "mailward user add alice@example.org --data DIR",
        "printf '%s\\n' \"$PW\" | mailward user add bob@example.org --password-stdin",
    )
    p.add_argument("address", help="the new user's address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    command(
        users,
        "list",
        cmd_user_list,
        "list users",
        "List accounts with their creation date and aliases.",
        "mailward user list --data DIR",
    )
    p = command(
        users,
        "del",
        cmd_user_del,
        "delete a user and all their mail",
        "Delete an account, every message in it and every alias pointing at it.",
        "mailward user del bob@example.org --data DIR",
    )
    p.add_argument("address")
    p = command(
        users,
        "passwd",
        cmd_user_passwd,
        "set a user's password",
        "Replace a user's password (generated and printed unless --password-stdin).",
        "mailward user passwd alice@example.org --data DIR",
        "mailward user passwd alice@example.org --password-stdin < pwfile",
    )
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = command(
        users,
        "quota",
        cmd_user_quota,
        "show or set a user's storage quota",
        "Show a user's storage use and quota, or set the quota: a size in bytes with an\n"
        "optional K, M or G suffix (powers of 1024); 0 means unlimited. Enforced on IMAP\n"
        "APPEND and COPY and checked before SMTP delivery; reported by IMAP QUOTA.",
        "mailward user quota alice@example.org --data DIR",
        "mailward user quota alice@example.org 2G --data DIR",
    )
    p.add_argument("address")
    p.add_argument("size", nargs="?", help="new quota (e.g. 500M, 2G, 0 = unlimited)")

    aliases = group("alias", "add, list, delete aliases", "Addresses that deliver to a user.")
    p = command(
        aliases,
        "add",
        cmd_alias_add,
        "add an alias",
        "Make ALIAS (in a local domain) deliver to the existing user TARGET.",
        "mailward alias add info@example.org alice@example.org --data DIR",
    )
    p.add_argument("alias")
    p.add_argument("target")
    p = command(
        aliases,
        "del",
        cmd_alias_del,
        "delete an alias",
        "Delete an alias.",
        "mailward alias del info@example.org --data DIR",
    )
    p.add_argument("alias")
    command(
        aliases,
        "list",
        cmd_alias_list,
        "list aliases",
        "List aliases as 'alias -> target'.",
        "mailward alias list --data DIR",
    )

    domains = group("domain", "add and list mail domains", "Domains this server receives for.")
    p = command(
        domains,
        "add",
        cmd_domain_add,
        "add a domain",
        "Receive mail for DOMAIN too: creates its DKIM keys and prints the DNS records\n"
        "(MX, SPF, DKIM, DMARC) to publish.",
        "mailward domain add example.net --data DIR",
    )
    p.add_argument("domain")
    command(
        domains,
        "list",
        cmd_domain_list,
        "list domains",
        "List local domains.",
        "mailward domain list --data DIR",
    )

    p = command(
        commands,
        "dns",
        cmd_dns,
        "print every DNS record to publish for a domain",
        "Print the records a local DOMAIN needs: MX, SPF, DKIM (every selector on disk),\n"
        "DMARC (p=quarantine to start), MTA-STS (the _mta-sts TXT record and the policy\n"
        "file to serve over HTTPS, mode testing to start), TLS-RPT, and the DANE TLSA\n"
        "record (3 1 1) of the configured TLS certificate; with notes on each.",
        "mailward dns example.org --data DIR",
        "mailward dns example.org --json --data DIR",
    )
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    dkim_group = group("dkim", "rotate DKIM keys", "DKIM signing keys (RFC 6376, RFC 8463).")
    p = command(
        dkim_group,
        "rotate",
        cmd_dkim_rotate,
        "make a new DKIM key pair the signing one",
        "Create a new Ed25519 and RSA key pair for DOMAIN under new selectors, sign with\n"
        "them from now on, and print their DNS records. The old keys are kept (mail in\n"
        "transit still verifies) until you delete their files.",
        "mailward dkim rotate example.org --data DIR",
    )
    p.add_argument("domain")

    config = group("config", "show or change the configuration", "The mailward.toml file.")
    p = command(
        config,
        "show",
        cmd_config_show,
        "print the configuration",
        "Print every configuration key with its value and documentation.",
        "mailward config show --data DIR",
        "mailward config show --json --data DIR",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    p = command(
        config,
        "set",
        cmd_config_set,
        "change one key",
        "Set KEY (section.key) to VALUE. The result is validated before it is written;\n"
        "lists are comma-separated or a TOML array.",
        "mailward config set limits.message_size 26214400 --data DIR",
        "mailward config set smtp.trusted_networks 10.0.0.0/8,192.168.0.0/16 --data DIR",
    )
    p.add_argument("key", help="section.key, e.g. listen.port_offset")
    p.add_argument("value")

    queue = group(
        "queue",
        "list, show, retry, delete outbound mail",
        "The outbound queue: one entry per remote recipient of each message.",
    )
    p = command(
        queue,
        "list",
        cmd_queue_list,
        "list queued outbound mail",
        "List every queue entry: id, state (queued, deferred, delivering), envelope,\n"
        "attempts, next attempt and the last error.",
        "mailward queue list --data DIR",
        "mailward queue list --json --data DIR",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(
        queue,
        "show",
        cmd_queue_show,
        "show one queue entry",
        "Show one entry in full, with the message's From, To, Subject, Date and\n"
        "Message-ID (never its body).",
        "mailward queue show 42 --data DIR",
    )
    p.add_argument("id")
    p = command(
        queue,
        "retry",
        cmd_queue_retry,
        "try a waiting entry again now",
        "Make a queued or deferred entry due now, whatever its retry schedule says.",
        "mailward queue retry 42 --data DIR",
    )
    p.add_argument("id")
    p = command(
        queue,
        "delete",
        cmd_queue_delete,
        "remove an entry without delivering it",
        "Remove an entry that is not being delivered right now. No DSN is sent.",
        "mailward queue delete 42 --data DIR",
    )
    p.add_argument("id")

    held = group(
        "quarantine",
        "list, show, release, delete held messages",
        "Messages a content check (malware, attachment policy, data-loss rules) held\n"
        "for review instead of delivering them.",
    )
    p = command(
        held,
        "list",
        cmd_quarantine_list,
        "list held messages",
        "List every held message: id, when, which check held it and why, sender, size.",
        "mailward quarantine list --data DIR",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(
        held,
        "show",
        cmd_quarantine_show,
        "show one held message",
        "Show why a message is held and its From, To, Subject, Date and Message-ID;\n"
        "--raw writes the whole message to standard output (to review it).",
        "mailward quarantine show 7 --data DIR",
        "mailward quarantine show 7 --raw --data DIR > held.eml",
    )
    p.add_argument("id")
    p.add_argument("--raw", action="store_true", help="write the whole message to stdout")
    p = command(
        held,
        "release",
        cmd_quarantine_release,
        "deliver a held message",
        "Send a held message on its normal way: into the local mailboxes it was for,\n"
        "and onto the outbound queue for remote recipients.",
        "mailward quarantine release 7 --data DIR",
    )
    p.add_argument("id")
    p = command(
        held,
        "delete",
        cmd_quarantine_delete,
        "drop a held message",
        "Delete a held message for good.",
        "mailward quarantine delete 7 --data DIR",
    )
    p.add_argument("id")

    bayes = group(
        "spam",
        "train and inspect users' Bayes spam filters",
        "Each user has a Bayes spam filter of their own. It learns from what they move\n"
        "into Junk (spam) and out of Junk (ham) and from the $Junk / $NotJunk keywords\n"
        "their mail client sets; these commands train it from files or from the\n"
        "user's mailboxes, and show what it has learnt.",
    )
    p = command(
        bayes,
        "train",
        cmd_spam_train,
        "train a user's Bayes filter",
        "Train ADDRESS's filter with messages: FILEs (RFC 5322 messages, mbox files or\n"
        "Maildirs) as --spam or --ham, or --from-mailboxes: the newest messages of the\n"
        "user's Junk mailbox as spam and of INBOX and Archive as ham (--limit of each).\n"
        "A message trained again as the same class is not counted twice; as the other\n"
        "class it is moved. Works while the server runs.",
        "mailward spam train alice@example.org --spam caught.mbox --data DIR",
        "mailward spam train alice@example.org --ham ~/Maildir --data DIR",
        "mailward spam train alice@example.org --from-mailboxes --data DIR",
    )
    p.add_argument("address")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--spam", nargs="+", type=Path, metavar="FILE", help="train these as spam")
    kind.add_argument(
        "--ham", nargs="+", type=Path, metavar="FILE", help="train these as wanted mail"
    )
    kind.add_argument(
        "--from-mailboxes", action="store_true", help="train from Junk, INBOX and Archive"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=admin.SPAM_TRAIN_LIMIT,
        metavar="N",
        help=f"newest messages of each class with --from-mailboxes ({admin.SPAM_TRAIN_LIMIT})",
    )
    p = command(
        bayes,
        "status",
        cmd_spam_status,
        "show what a user's Bayes filter has learnt",
        "Show how many spam and ham messages ADDRESS's filter has been trained with and\n"
        "whether it gives verdicts yet (spam.bayes_min_trained of each).",
        "mailward spam status alice@example.org --data DIR",
        "mailward spam status alice@example.org --json --data DIR",
    )
    p.add_argument("address")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(
        commands,
        "export",
        cmd_export,
        "write a mailbox as mboxrd to stdout",
        "Write one mailbox of a user to standard output in mboxrd format (RFC 4155),\n"
        "each message byte for byte as stored.",
        "mailward export alice@example.org --data DIR > alice.mbox",
        "mailward export alice@example.org --mailbox Sent --data DIR > sent.mbox",
    )
    p.add_argument("address")
    p.add_argument("--mailbox", default="INBOX", metavar="NAME", help="default INBOX")

    p = command(
        commands,
        "import",
        cmd_import,
        "import an mbox file or a Maildir",
        "Deliver every message of an mbox/mboxrd file or a Maildir (cur/ and new/, with\n"
        "its flags) into a user's mailbox (created if missing). LF-only messages are\n"
        "stored with CRLF. Malformed entries are reported and skipped.",
        "mailward import alice@example.org old.mbox --data DIR",
        "mailward import alice@example.org ~/Maildir --mailbox Archive --data DIR",
    )
    p.add_argument("address")
    p.add_argument("source", type=Path, metavar="FILE_OR_MAILDIR")
    p.add_argument("--mailbox", default="INBOX", metavar="NAME", help="default INBOX")

    command(
        commands,
        "serve",
        cmd_serve,
        "run the mail server",
        "Run every configured listener until SIGTERM or SIGINT.",
        "mailward serve --data /var/lib/mailward",
    )
    return parser


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None, *, password_hasher: Hasher | None = None) -> int:
    """Run one command; returns the exit status. `password_hasher` is for tests."""
    from mailward.config.load import ConfigError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Handler = args.handler
        return handler(args, Context(password_hasher))
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except (UsageError, AdminError, ConfigError) as exc:
        _err(f"mailward: error: {exc}")
        return 2
    except (NotFound, AlreadyExists) as exc:
        _err(f"mailward: error: {exc}")
        return 2
    except (StoreError, OperationFailed) as exc:
        _err(f"mailward: error: {exc}")
        return 1
    except BrokenPipeError:  # e.g. `mailward export ... | head`: not worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is quiet
        os.close(devnull)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _err(f"mailward: error: {where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        _err("mailward: interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
