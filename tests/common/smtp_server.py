"""A real SMTP server for the tests (aiosmtpd, installed by ./scripts/test), on 127.0.0.1.

Usage: smtp_server.py OUT_DIR PORT USER PASSWORD
Requires AUTH (PLAIN or LOGIN) with USER/PASSWORD before MAIL; writes each message it
accepts to OUT_DIR/NNNN.eml, after a first line naming the authenticated user. Prints
"ready" once it listens; stops on SIGTERM.
"""

import os
import signal
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

out_dir, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(out_dir))
        who = getattr(session, "test_user", "")
        content = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        tmp = os.path.join(out_dir, f".{n:04d}.tmp")
        with open(tmp, "wb") as f:
            f.write(f"X-Test-Auth-User: {who}\r\n".encode())
            f.write(f"X-Test-Rcpt: {','.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(content)
        os.rename(tmp, os.path.join(out_dir, f"{n:04d}.eml"))
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    if ok:
        session.test_user = user
    return AuthResult(success=ok, handled=False)


controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=port,
    authenticator=authenticate,
    auth_require_tls=False,
    auth_required=True,
)
controller.start()
print("ready", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
controller.stop()
