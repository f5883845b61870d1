"""A real SMTP server for the tests (aiosmtpd), started by tests/support/smtp.rs.

    python3 smtpd.py --port P --dir D --mode starttls|tls|plain --cert C --key K --user U --password W

starttls: offers STARTTLS and AUTH PLAIN/LOGIN only over TLS (port 587 style);
tls:      TLS from the first byte, AUTH offered (port 465 style);
plain:    no TLS at all, AUTH offered in clear (a client that logs in here gave its password
          away, so the tests can see that ours never does); takes mail without a login, as
          a relay on the same machine does. The other modes take mail only after a login.

--auth-exclude MECHANISM (repeatable) stops offering a login mechanism (PLAIN). A recipient
nobody@… is refused (550).

Every message accepted is written to D/NNNN.json (envelope, data, the headers and body
as Python's email package reads them, whether it came over TLS, who logged in). D/events.log gets one line per EHLO, STARTTLS, AUTH and MAIL command (never
a password). Prints READY when it accepts connections.
"""

import argparse
import email
import email.policy
import json
import os
import signal
import ssl
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--dir", required=True)
parser.add_argument("--mode", choices=["starttls", "tls", "plain"], required=True)
parser.add_argument("--cert", required=True)
parser.add_argument("--key", required=True)
parser.add_argument("--user", required=True)
parser.add_argument("--password", required=True)
parser.add_argument("--auth-exclude", action="append", default=[])
args = parser.parse_args()

lock = threading.Lock()
count = [0]


def event(line):
    with lock:
        with open(os.path.join(args.dir, "events.log"), "a", encoding="utf-8") as f:
            f.write(line + "\n")


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == args.user.encode()
        and auth_data.password == args.password.encode()
    )
    event(f"LOGIN {mechanism} {'ok' if ok else 'refused'}")
    # handled=False: aiosmtpd answers a refusal with 535 itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class Recording(SMTP):
    def _tls(self):
        return self._tls_protocol is not None or args.mode == "tls"

    async def smtp_EHLO(self, arg):
        event(f"EHLO {arg} tls={self._tls()}")
        return await super().smtp_EHLO(arg)

    async def smtp_STARTTLS(self, arg):
        event("STARTTLS")
        return await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg):
        mechanism = arg.split()[0] if arg else ""
        event(f"AUTH {mechanism} tls={self._tls()}")
        return await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg):
        event(f"MAIL tls={self._tls()}")
        return await super().smtp_MAIL(arg)


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # A mailbox that does not exist, for the tests of a refused recipient.
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if not session.authenticated and args.mode != "plain":
            return "530 5.7.0 Authentication required"
        with lock:
            count[0] += 1
            n = count[0]
        # Read as a mail client would: headers decoded (RFC 2047), the body's transfer
        # encoding undone.
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        record = {
            "headers": [[k, str(v)] for k, v in parsed.items()],
            "text": body.get_content().replace("\r\n", "\n") if body is not None else None,
            "defects": [repr(d) for d in parsed.defects]
            + [repr(d) for v in parsed.values() for d in getattr(v, "defects", ())],
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "data": envelope.content.decode("utf-8", errors="replace"),
            "tls": server._tls(),
            "user": session.auth_data.login.decode() if session.auth_data else None,
        }
        path = os.path.join(args.dir, f"{n:04}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 Message accepted for delivery"


class Server(Controller):
    def factory(self):
        return Recording(self.handler, **self.SMTP_kwargs)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(args.cert, args.key)

kwargs = dict(
    hostname="127.0.0.1",
    port=args.port,
    authenticator=authenticator,
    server_hostname="smtp.pipeline.test",
    auth_exclude_mechanism=args.auth_exclude,
)
if args.mode == "starttls":
    kwargs.update(tls_context=context, require_starttls=True, auth_require_tls=True)
elif args.mode == "tls":
    kwargs.update(ssl_context=context, auth_require_tls=False)
else:
    kwargs.update(auth_require_tls=False)

server = Server(Handler(), **kwargs)
server.start()
print("READY", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
server.stop()
