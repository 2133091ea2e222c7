"""A real SMTP server for the notification specs: aiosmtpd on 127.0.0.1, every message it
receives appended to a file as one JSON line {"from", "to": [...], "subject", "body"}.

    smtp_sink.py PORT MESSAGES_FILE [--fail-file PATH]

PORT 0 picks a free port. The first line on standard output is the port, once the server
listens. While PATH (--fail-file) exists, every message is refused with a temporary error (451),
as a mail server that is down for a while answers. Runs until killed (SIGTERM, SIGINT, SIGKILL).

Run by tests/e2e/harness.rs (SmtpSink) with the venv scripts/notify-venv.sh makes.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import signal

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, path, fail_file):
        self.path = path
        self.fail_file = fail_file

    async def handle_DATA(self, server, session, envelope):
        if self.fail_file and os.path.exists(self.fail_file):
            return "451 4.3.0 the test sink is told to fail"
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        body_part = msg.get_body(preferencelist=("plain",)) if msg.is_multipart() else msg
        try:
            body = body_part.get_content() if body_part is not None else ""
        except (KeyError, LookupError):
            body = (body_part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        body = body.replace("\r\n", "\n")
        record = {
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "subject": str(msg.get("Subject", "")),
            "body": body,
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        return "250 OK"


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("messages")
    p.add_argument("--fail-file")
    a = p.parse_args()
    loop = asyncio.get_running_loop()
    handler = Sink(a.messages, a.fail_file)
    server = await loop.create_server(lambda: SMTP(handler, hostname="cronmesh-test-sink"), "127.0.0.1", a.port)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
