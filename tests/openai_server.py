"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: the subset of the API the served engine uses
(chat completions with logprobs, vLLM's /tokenize), answering as a test scripts it, faults included."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

YES, NO = 11, 12  # the token ids the fake server's /tokenize gives "yes"/"Yes"/... and "no"/"No"/...


def verdict_answer(p_yes: float, ids: bool = True, drop: tuple[int, ...] = ()) -> dict:
    """A chat-completions answer whose first token's logprobs hold P(yes) and 1 - P(yes)."""
    top = [{"token": f"token_id:{YES}" if ids else "Yes", "logprob": math.log(p_yes)},
           {"token": f"token_id:{NO}" if ids else "No", "logprob": math.log(1 - p_yes)}]
    top = [t for t in top if not any(t["token"] == f"token_id:{d}" for d in drop)]
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes"}, "finish_reason": "length",
                         "logprobs": {"content": [{"token": "Yes", "logprob": -0.1, "top_logprobs": top}]}}]}


class FaultyServer:
    """`behave(n, path, body)` -> ("ok", payload) | ("status", code) | ("hang", seconds) | ("cut", payload), for
    the n-th request (1-based) to a path other than /tokenize, which always answers. `requests` holds those
    requests' bodies, `headers` every request's headers."""

    def __init__(self, behave, tokenize: bool = True):
        self.behave, self.lock, self.requests, self.headers = behave, threading.Lock(), [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.headers.append(dict(self.headers))  # every request's, /tokenize included
                if self.path.endswith("/tokenize") and not tokenize:  # a server without vLLM's /tokenize
                    return self._send(404, {"error": {"message": "not found"}})
                if self.path.endswith("/tokenize"):
                    token = body["prompt"].strip().lower()
                    return self._send(200, {"tokens": [YES] if token == "yes" else [NO] if token == "no" else
                                            [1, 2]})
                with outer.lock:
                    outer.requests.append(body)
                    n = len(outer.requests)
                kind, value = outer.behave(n, self.path, body)
                if kind == "hang":
                    time.sleep(value)
                    return self._send(200, verdict_answer(0.5))
                if kind == "status":
                    return self._send(value, {"error": {"message": f"HTTP {value} from the fault script"}})
                if kind == "cut":  # promise the whole answer, send half, close
                    data = json.dumps(value).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                return self._send(200, value)

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
