"""bench_serving against a fake OpenAI streaming server on 127.0.0.1 (loopback only)."""
import importlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# optional dependency: skipped when absent locally, a failure in CI (which installs it)
if os.environ.get("CI") == "true":
    importlib.import_module("httpx")
else:
    pytest.importorskip("httpx")

TOKEN_DELAY = 0.005


class FakeOpenAI(BaseHTTPRequestHandler):
    """Streams max_tokens one-word chunks. Model 'broken' answers 500; model 'slow' stalls 5 s."""

    def log_message(self, *a):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/completions", "/v1/chat/completions") or not body.get("stream"):
            self.send_error(404)
            return
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "boom"}')
            return
        self.server.requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if body["model"] == "slow":
            time.sleep(5)
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        n = body["max_tokens"]
        for i in range(n):
            time.sleep(TOKEN_DELAY)
            choice = {"index": 0, "delta": {"content": f" w{i}"}} if chat else {"index": 0, "text": f" w{i}"}
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            self.wfile.flush()
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": n, "total_tokens": 0}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    srv.daemon_threads = True
    srv.requests = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _run(perf_module, tmp_path, url, *extra):
    bs = perf_module("bench_serving")
    out = tmp_path / "serving.json"
    rc = bs.main(["--base-url", url, "--out", str(out), "--warmup-requests", "0", *extra])
    return rc, json.loads(out.read_text())


def test_sweep_completions(perf_module, tmp_path, server):
    srv, url = server
    rc, doc = _run(perf_module, tmp_path, url, "--model", "m", "--num-prompts", "8", "--max-tokens", "5",
                   "--concurrency", "1,4", "--input-len", "6", "--include-usage")
    assert rc == 0 and doc["schema"] == "amd-llama4/bench_serving/v1"
    assert [r["max_concurrency"] for r in doc["results"]] == [1, 4]
    assert len(srv.requests) == 16 and all(r["stream"] and r["max_tokens"] == 5 for r in srv.requests)
    for r in doc["results"]:
        assert (r["completed"], r["failed"], r["total_output_tokens"]) == (8, 0, 40)
        # "Request i: " + 6 words = 8 whitespace-separated words, reported through usage
        assert r["total_input_tokens"] == 8 * 8
        for k in ("request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
                  "mean_itl_ms", "p99_itl_ms", "mean_tpot_ms", "mean_e2el_ms", "duration"):
            assert r[k] is not None and r[k] > 0, k
        # 4 inter-token gaps per request, each at least the server's delay
        assert r["mean_itl_ms"] >= TOKEN_DELAY * 1e3 * 0.9
        assert r["p99_ttft_ms"] >= r["median_ttft_ms"]
        assert r["output_throughput"] == pytest.approx(40 / r["duration"])
    c1, c4 = doc["results"]
    assert c4["duration"] < c1["duration"]  # concurrency overlaps the 8 requests


def test_chat_endpoint_counts_chunks_without_usage(perf_module, tmp_path, server):
    srv, url = server
    rc, doc = _run(perf_module, tmp_path, url, "--model", "m", "--endpoint", "chat", "--num-prompts", "3",
                   "--max-tokens", "4", "--concurrency", "2")
    r = doc["results"][0]
    assert rc == 0 and (r["completed"], r["total_output_tokens"]) == (3, 12)
    assert r["total_input_tokens"] is None  # unknown without usage, never guessed
    assert "messages" in srv.requests[0] and "prompt" not in srv.requests[0]


def test_failures_are_counted_not_fatal(perf_module, tmp_path, server):
    _, url = server
    rc, doc = _run(perf_module, tmp_path, url, "--model", "broken", "--num-prompts", "4", "--max-tokens", "3",
                   "--concurrency", "2")
    r = doc["results"][0]
    assert rc == 1 and (r["completed"], r["failed"]) == (0, 4)
    assert any("HTTP 500" in e for e in r["errors"])
    assert r["mean_ttft_ms"] is None


def test_request_timeout_bounds_the_run(perf_module, tmp_path, server):
    _, url = server
    t0 = time.perf_counter()
    rc, doc = _run(perf_module, tmp_path, url, "--model", "slow", "--num-prompts", "2", "--max-tokens", "2",
                   "--concurrency", "2", "--request-timeout", "0.5")
    assert time.perf_counter() - t0 < 4.0
    r = doc["results"][0]
    assert rc == 1 and r["failed"] == 2 and any("timeout" in e for e in r["errors"])


def test_percentile_matches_linear_interpolation(perf_module):
    bs = perf_module("bench_serving")
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert bs.percentile(xs, 50) == 3.0
    assert bs.percentile(xs, 99) == pytest.approx(4.0 + 0.96 * 6.0)  # pos = 3.96
    assert bs.percentile([7.0], 99) == 7.0
