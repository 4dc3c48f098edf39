"""Small local HTTP endpoints for the gate tests: a Prometheus-compatible /api/v1/query whose
answers the test sets, and a webhook receiver that keeps every JSON body POSTed to it, in order."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Endpoint(object):
    def __init__(self):
        self.queries, self.posts = [], []
        self.answers = {}  # query -> answer (dict) or a list of answers, one per ask (the last repeats)
        self.status = 200
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                if url.path != "/api/v1/query":
                    return self._reply(404, {"status": "error", "error": "not found"})
                query = parse_qs(url.query).get("query", [""])[0]
                n = sum(1 for q in endpoint.queries if q == query)
                endpoint.queries.append(query)
                answer = endpoint.answers.get(query)
                if answer is None:
                    return self._reply(400, {"status": "error", "errorType": "bad_data", "error": "parse error"})
                if isinstance(answer, list):
                    answer = answer[min(n, len(answer) - 1)]
                return self._reply(200, answer)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.posts.append(dict(json.loads(body), _headers=dict(self.headers)))
                self._reply(endpoint.status, {"ok": endpoint.status < 300})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self):
        return [p["event"] for p in self.posts]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def vector(*values, name="ALERTS"):
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": name, "instance": "h%d" % i}, "value": [1760000000.0, str(v)]} for i, v in enumerate(values)]}}


def scalar(value):
    return {"status": "success", "data": {"resultType": "scalar", "result": [1760000000.0, str(value)]}}
