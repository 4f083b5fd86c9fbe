"""A small OpenAI-style upstream for the Envoy tests: POST /v1/chat/completions answers JSON with
`usage`, or (with "stream": true) server-sent events whose last data chunk carries `usage`.
The usage is fixed by the request: prompt_tokens = 10 * number of messages, completion_tokens =
the request's max_tokens (default 20), so tests know what each answer costs. `GET /calls`
reports how many completions were served.

    python upstream.py PORT
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

served = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, json.dumps({"calls": served}).encode(), "application/json")

    def do_POST(self) -> None:
        global served
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        with lock:
            served += 1
        prompt = 10 * len(request.get("messages", []))
        completion = int(request.get("max_tokens", 20))
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        model = request.get("model", "gpt-4o")
        if not request.get("stream"):
            answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."},
                                   "finish_reason": "stop"}],
                      "usage": usage}
            self._send(200, json.dumps(answer).encode(), "application/json")
            return
        chunks = [
            {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
            {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": {"content": "lo."}, "finish_reason": "stop"}]},
            {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage},
        ]
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self._send(200, body.encode(), "text/event-stream")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.serve_forever()
