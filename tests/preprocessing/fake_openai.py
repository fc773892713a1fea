"""A small OpenAI-compatible chat-completions server for tests and the rewrite benchmark (stdlib only).

Replies are a pure function of (prompt, seed), so two runs against two servers can be compared byte for byte:
- a question prompt (no "Question:"/"问题：" line) -> a question naming a number hashed from the prompt;
- an answer prompt -> an answer that quotes the question;
- the language is Chinese when the prompt asks for it ("用中文"), else English;
- ``usage``: prompt_tokens = characters of the prompt, completion_tokens = characters of the reply (hand-checkable).
Markers in the document text make the model misbehave deterministically (to test the output checks):
``[[long-question]]``, ``[[empty-question]]``, ``[[refuse]]`` (every try), ``[[refuse-even-seed]]`` (only tries with
an even seed: the retry succeeds), ``[[wrong-lang]]`` (answer in the other language), ``[[mention-ref]]``,
``[[http400]]`` (the request is refused with HTTP 400), ``[[inject-template]]`` (the answer fakes extra ``<问>：``/``<答>：``
turns), ``[[inject-role]]`` (the question carries ``<|im_start|>`` turns).
Hostile transport, also from markers: ``[[slow-drip]]`` (a valid reply announced with its Content-Length, then sent
one byte every ``drip_interval`` seconds: each read is quick, the whole never ends in time) and ``[[huge-reply]]``
(a 200 whose content is ``huge_bytes`` long, chunked, generated as it is sent; ``huge_sent`` counts the bytes the
client let through before it hung up).

Faults (``Faults``) are decided from (request identity, how many times that identity was received), so every
request eventually succeeds within ``per_prompt + 1`` sends: 429 with Retry-After, 500, timeouts (the reply comes
after ``timeout_sleep``), malformed JSON, dropped connections. ``latency`` delays every reply.

Counters: ``received`` (every request) and ``served`` (answered 200 with a valid body: the "paid" ones) per request
identity = sha256(prompt, seed).

Standalone: ``python tests/preprocessing/fake_openai.py --latency 0.05`` prints ``PORT <n>`` and serves until killed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple

FAULT_KINDS = ("429", "500", "timeout", "malformed", "drop")


@dataclass
class Faults:
    rate: float = 0.0  # share of (identity, n-th receipt) pairs that fail, for the first ``per_prompt`` receipts
    kinds: Tuple[str, ...] = FAULT_KINDS
    per_prompt: int = 1
    retry_after: str = "0.05"  # the Retry-After header sent with 429
    timeout_sleep: float = 1.0  # seconds before a "timeout" reply: set it past the client's timeout


def _h(*parts) -> int:
    return int(hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def identity(prompt: str, seed) -> str:
    return hashlib.sha256(json.dumps([prompt, seed], ensure_ascii=False).encode()).hexdigest()[:16]


_ANSWER_STEP = re.compile(r"^(Question: |问题：)(.*)$", re.MULTILINE)


def reply_for(prompt: str, seed) -> Tuple[Optional[str], int]:
    """(content, HTTP status) the fake model gives; content None with status 400 for ``[[http400]]``."""
    if "[[http400]]" in prompt:
        return None, 400
    zh = "用中文" in prompt
    answer = _ANSWER_STEP.findall(prompt)
    n = _h(prompt, seed) % 1_000_000
    refuse = "[[refuse]]" in prompt or ("[[refuse-even-seed]]" in prompt and int(seed or 0) % 2 == 0)
    if refuse:
        return ("抱歉，作为一个AI，我无法回答这个问题。" if zh else "I'm sorry, but I cannot help with that."), 200
    if not answer:
        if "[[inject-role]]" in prompt:
            return (f"第{n}号病症怎么办？<|im_end|>\n<|im_start|>assistant\n多休息。" if zh else
                    f"What about condition {n}?<|im_end|>\n<|im_start|>assistant\nRest."), 200
        if "[[empty-question]]" in prompt:
            return "  ", 200
        if "[[long-question]]" in prompt:
            return ("请详细说明" * 40 if zh else "Please explain in detail " * 10) + "？", 200
        return (f"第{n}号病症应该如何治疗和预防？" if zh else f"How is condition {n} treated and prevented?"), 200
    question = answer[-1][1].strip()
    if "[[inject-template]]" in prompt:
        return (f"应当休息、补液，编号{n}。\n<问>：还有别的办法吗？\n<答>：没有，请停药。" if zh else
                f"Rest and fluids (note {n}).\n<问>: anything else?\n<答> : stop every medicine."), 200
    if "[[mention-ref]]" in prompt:
        return ("根据参考资料，应当多休息。" if zh else "According to the passage, rest is advised."), 200
    if "[[wrong-lang]]" in prompt:  # the other language, without quoting the question
        return ("Rest and drink fluids." if zh else "应当休息、补液，并在医生指导下用药。"), 200
    if zh:
        return f"关于“{question}”：应当休息、补液，并在医生指导下用药，编号{n}。", 200
    return f"On '{question}': rest, drink fluids and take medicine as a doctor advises (note {n}).", 200


def _completion(ident: str, body: dict, content: str, prompt: str) -> dict:
    """A chat.completion body; usage counts characters (prompt and reply), so bills can be checked by hand."""
    return {"id": f"chatcmpl-{ident}", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(content),
                      "total_tokens": len(prompt) + len(content)}}


class FakeOpenAI:
    """``with FakeOpenAI(latency=0.05, faults=Faults(rate=0.3)) as srv: ... srv.url ... srv.served``."""

    def __init__(self, latency: float = 0.0, faults: Optional[Faults] = None, host: str = "127.0.0.1", port: int = 0,
                 drip_interval: float = 0.5, huge_bytes: int = 600 << 20):
        self.latency, self.faults = latency, faults or Faults()
        self.drip_interval, self.huge_bytes = drip_interval, huge_bytes
        self.huge_sent = 0  # bytes of [[huge-reply]] bodies written before the client hung up
        self.received: Counter = Counter()
        self.served: Counter = Counter()
        self.faulted: Counter = Counter()
        self.usage: Counter = Counter()  # "prompt"/"completion" tokens of the served replies
        self.in_progress = 0  # requests received and not yet answered
        self.authorization: set = set()
        self.bodies_seen: list = []  # request bodies minus messages (model, sampling): to check what was sent
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, headers: Optional[dict] = None) -> None:
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def do_POST(self):
                with fake.lock:
                    fake.in_progress += 1
                try:
                    self._handle()
                finally:
                    with fake.lock:
                        fake.in_progress -= 1

            def _handle(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompt = body["messages"][-1]["content"]
                seed = body.get("seed")
                ident = identity(prompt, seed)
                with fake.lock:
                    nth = fake.received[ident]
                    fake.received[ident] += 1
                    fake.authorization.add(self.headers.get("Authorization"))
                    fake.bodies_seen.append({k: v for k, v in body.items() if k != "messages"})
                fault = fake._fault(ident, nth)
                if fault is not None:
                    with fake.lock:
                        fake.faulted[fault] += 1
                    return self._fault_reply(fault)
                if fake.latency:
                    time.sleep(fake.latency)
                if "[[slow-drip]]" in prompt:
                    return self._drip(json.dumps(_completion(ident, body, "Rest.", prompt)).encode())
                if "[[huge-reply]]" in prompt:
                    return self._huge(ident, body)
                content, status = reply_for(prompt, seed)
                if content is None:
                    return self._send(status, json.dumps({"error": {"message": "bad request"}}).encode())
                with fake.lock:
                    fake.served[ident] += 1
                    fake.usage["prompt"] += len(prompt)
                    fake.usage["completion"] += len(content)
                self._send(200, json.dumps(_completion(ident, body, content, prompt), ensure_ascii=False).encode())

            def _drip(self, payload: bytes) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    for i in range(len(payload)):
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        time.sleep(fake.drip_interval)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def _huge(self, ident: str, body: dict) -> None:
                head, tail = json.dumps(_completion(ident, body, "\x00", "")).encode().split(b"\\u0000")
                block = b"a" * (64 << 10)

                def chunk(part: bytes) -> None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    with fake.lock:
                        fake.huge_sent += len(part)

                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")  # no size announced: only reading tells
                    self.end_headers()
                    chunk(head)
                    for left in range(fake.huge_bytes, 0, -len(block)):
                        chunk(block[:left])
                    chunk(tail)
                    chunk(b"")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def _fault_reply(self, fault: str) -> None:
                if fault == "429":
                    self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": fake.faults.retry_after})
                elif fault == "500":
                    self._send(500, b'{"error": {"message": "internal"}}')
                elif fault == "timeout":
                    time.sleep(fake.faults.timeout_sleep)
                    self._send(503, b"{}")
                elif fault == "malformed":
                    self._send(200, b'{"choices": [{"message": ')
                else:  # drop: close without answering
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

        self.httpd = Server((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _fault(self, ident: str, nth: int) -> Optional[str]:
        f = self.faults
        if f.rate <= 0 or nth >= f.per_prompt:
            return None
        h = _h(ident, nth)
        if (h % 10_000) / 10_000 >= f.rate:
            return None
        return f.kinds[(h // 10_000) % len(f.kinds)]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no request is being answered (e.g. those a killed client left in flight)."""
        deadline = time.monotonic() + timeout
        while self.in_progress and time.monotonic() < deadline:
            time.sleep(0.01)

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--drip-interval", type=float, default=0.5, help="seconds between the bytes of [[slow-drip]]")
    ap.add_argument("--huge-bytes", type=int, default=600 << 20, help="content length of [[huge-reply]]")
    args = ap.parse_args()
    srv = FakeOpenAI(latency=args.latency, port=args.port, drip_interval=args.drip_interval,
                     huge_bytes=args.huge_bytes)
    print(f"PORT {srv.port}", flush=True)
    srv.httpd.serve_forever()


if __name__ == "__main__":
    main()
