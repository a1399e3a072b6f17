"""A webhook receiver for Parley's end-to-end tests.

Verifies every request with the `standardwebhooks` package (the Standard Webhooks reference
library) and appends what it received, one JSON object per line, to a log file:
{"verified": true, "webhook_id": ..., "type": ..., "data": ...} — or {"verified": false, "error": ...}.
Verified requests are answered 204, others 401.

Usage: webhook_receiver.py PORT SECRET LOG_FILE
Prints "ready" once it listens.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT = int(sys.argv[1])
WEBHOOK = Webhook(sys.argv[2])
LOG_FILE = sys.argv[3]
LOCK = threading.Lock()


def record(entry):
    with LOCK:
        with open(LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
            log.flush()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {name: value for name, value in self.headers.items()}
        try:
            payload = WEBHOOK.verify(body, headers)
        except (WebhookVerificationError, ValueError) as error:
            record({"verified": False, "error": str(error)})
            self.send_response(401)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        record(
            {
                "verified": True,
                "webhook_id": headers.get("webhook-id") or headers.get("Webhook-Id"),
                "type": payload.get("type"),
                "timestamp": payload.get("timestamp"),
                "data": payload.get("data"),
            }
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
