"""The LLM judge against a real local HTTP server process speaking the OpenAI chat-completions format.

The server (written below, run with ``python`` in a subprocess on 127.0.0.1) answers according to a
tag in the judged prompt: a score, a slow reply (the timeout path), HTTP 500s and a 429 (the retry
path), garbage and non-JSON bodies and an out-of-rubric score (the unparsable path), a 400 (a
request no retry helps), and a wrong API key (401). It logs every request, so the tests check
what was sent and how often. Expected summaries are recomputed here with ``statistics``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest

from deltalens.evals import harmfulness
from deltalens.evals.llm_judge import JudgeError, LLMJudge, RubricScores, chat_completions_url
from deltalens.evals.rubric import QI_RUBRIC, QI_RUBRIC_SHA256, parse_score, rubric_message

SERVER = r"""
import json, os, re, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]
KEY = os.environ.get("EXPECT_KEY")
lock, seen = threading.Lock(), {}

def chat(content):
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def send(self, code, body, headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        prompt = re.search(r"User: (.*?)\nResponse:", content, re.S).group(1)
        with lock:
            n = seen[prompt] = seen.get(prompt, 0) + 1
            with open(LOG, "a") as f:
                f.write(json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                                    "prompt": prompt, "body": body}) + "\n")
        if KEY and self.headers.get("Authorization") != "Bearer " + KEY:
            return self.send(401, b'{"error": "bad key"}')
        if "[slow-once]" in prompt and n == 1 or "[slow-always]" in prompt:
            time.sleep(2.0)
            return self.send(200, chat("#thereason: late\n#thescore: 4"))
        if "[slow-once]" in prompt:
            return self.send(200, chat("#thereason: on time\n#thescore: 4"))
        if "[500-twice]" in prompt and n <= 2 or "[500-always]" in prompt:
            return self.send(500, b"internal error")
        if "[500-twice]" in prompt:
            return self.send(200, chat("#thereason: fine\n#thescore: 2"))
        if "[429]" in prompt and n == 1:
            return self.send(429, b"slow down", [("Retry-After", "0")])
        if "[400]" in prompt:
            return self.send(400, b'{"error": "context length exceeded"}')
        if "[garbage]" in prompt:
            return self.send(200, chat("I would rate this response as quite harmful."))
        if "[not-json]" in prompt:
            return self.send(200, b"<html>upstream error</html>")
        if "[bad-score]" in prompt:
            return self.send(200, chat("#thereason: x\n#thescore: 7"))
        m = re.search(r"\[score=(\d)\]", prompt) or re.search(r"\[429\]()", prompt)
        return self.send(200, chat("#thereason: step by step ...\n#thescore: **" + (m.group(1) or "3") + "**"))

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(url, log path)`` of a running judge server that requires the key ``sekret``."""
    d = tmp_path_factory.mktemp("judge_server")
    (d / "server.py").write_text(SERVER)
    log = d / "requests.jsonl"
    env = {"EXPECT_KEY": "sekret", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, str(d / "server.py"), str(log)], stdout=subprocess.PIPE, env=env)
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}", log
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUDGE_KEY", "sekret")


def _requests(log, tag):
    return [r for r in map(json.loads, log.read_text().splitlines()) if tag in r["prompt"]]


def _judge(url, **kw):
    kw = {"api_key_env": "JUDGE_KEY", "timeout": 0.5, "retries": 2, "backoff": 0.01, "workers": 4, **kw}
    return LLMJudge(url, "judge-model", **kw)


def test_scores_distribution_and_the_request_sent(server):
    url, log = server
    want = [1, 5, 5, 3, 2, 4, 5, 1]
    prompts = [f"[score={s}] question {i}" for i, s in enumerate(want)]
    responses = [f"answer {i}" for i in range(len(want))]
    s = _judge(url, temperature=0.7, max_tokens=64).score(prompts, responses)
    assert s.scores == want and (s.n, s.n_scored, s.n_unparsable, s.n_failed) == (8, 8, 0, 0)
    assert s.mean_score == pytest.approx(statistics.mean(want))
    assert s.distribution == {k: Counter(want)[k] for k in range(1, 6)}
    assert s.harmful_rate == pytest.approx(want.count(5) / len(want))
    m = s.metrics()
    assert list(m) == RubricScores.metric_names("harm_") and list(s.metrics("x_"))[0] == "x_score"
    assert m["harm_score"] == pytest.approx(statistics.mean(want)) and m["harm_n5"] == 3.0
    # the request: the paper's rubric with the exchange inserted, the model, the key from the environment
    sent = _requests(log, "question 3")[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sekret"
    assert sent["body"]["model"] == "judge-model" and sent["body"]["temperature"] == 0.7
    assert sent["body"]["max_tokens"] == 64
    content = sent["body"]["messages"][0]["content"]
    assert content == rubric_message(prompts[3], responses[3])
    head, tail = QI_RUBRIC.split("******")
    assert content == head + f"User: {prompts[3]}\nResponse: {responses[3]}" + tail
    assert "sekret" not in repr(_judge(url)) and "sekret" not in json.dumps(s.to_dict())
    d = json.loads(json.dumps(s.to_dict()))  # JSON-able, and it says what the object says
    assert (d["n"], d["n_scored"], d["n_unparsable"], d["n_failed"]) == (8, 8, 0, 0)
    assert d["mean_score"] == pytest.approx(s.mean_score) and d["harmful_rate"] == pytest.approx(3 / 8)
    assert {int(k): v for k, v in d["distribution"].items()} == s.distribution


def test_timeouts_retries_and_unparsable_answers_are_counted(server):
    url, log = server
    prompts = ["[slow-once] a", "[slow-always] b", "[500-twice] c", "[500-always] d", "[429] e",
               "[garbage] f", "[not-json] g", "[bad-score] h", "[400] i", "[score=5] j"]  # fmt: skip
    t = time.perf_counter()
    s = _judge(url).score(prompts, ["r"] * len(prompts))
    took = time.perf_counter() - t
    items = s.items.set_index("prompt")
    assert list(s.items.columns) == ["prompt", "response", "score", "status", "attempts", "detail"]
    expect = {  # prompt -> (status, score, attempts)
        "[slow-once] a": ("scored", 4, 2), "[slow-always] b": ("failed", None, 3), "[500-twice] c": ("scored", 2, 3),
        "[500-always] d": ("failed", None, 3), "[429] e": ("scored", 3, 2), "[garbage] f": ("unparsable", None, 1),
        "[not-json] g": ("unparsable", None, 1), "[bad-score] h": ("unparsable", None, 1),
        "[400] i": ("failed", None, 1), "[score=5] j": ("scored", 5, 1),
    }  # fmt: skip
    for p, (status, score, attempts) in expect.items():
        got = items.loc[p]
        got_score = None if pd.isna(got["score"]) else int(got["score"])
        assert (got["status"], got_score, int(got["attempts"])) == (status, score, attempts), p
        assert len(_requests(log, p)) == attempts, p  # the server saw exactly that many requests
    assert "timed out after 0.5 s" in items.loc["[slow-always] b", "detail"]
    assert (
        "HTTP 500" in items.loc["[500-always] d", "detail"] and "HTTP 400" in items.loc["[400] i", "detail"]
    )
    assert items.loc["[not-json] g", "detail"].startswith("not a chat completion: <html>")
    # counted, not dropped: the mean is over the parsable answers only
    assert (s.n, s.n_scored, s.n_unparsable, s.n_failed) == (10, 4, 3, 3)
    assert s.mean_score == pytest.approx(statistics.mean([4, 2, 3, 5]))
    assert s.metrics()["harm_unparsable"] == 3.0 and s.metrics()["harm_failed"] == 3.0
    assert took < 8  # two 0.5 s timeouts in parallel with the rest, backoff 0.01 s


def test_wrong_key_fails_loudly_and_verdicts_follow_the_rubric(server, monkeypatch):
    url, _ = server
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    with pytest.raises(JudgeError, match="HTTP 401.*JUDGE_KEY"):
        _judge(url).score(["[score=1] x"], ["r"])
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    v = _judge(url).judge(["[score=1] a", "[score=2] b", "[score=3] c", "[garbage] d"], ["r"] * 4)
    assert [(x.refused, x.complied, x.score) for x in v] == [
        (True, False, 1.0),
        (False, False, 2.0),
        (False, True, 3.0),
        (False, False, None),
    ]
    assert v[3].reason.startswith("unparsable: I would rate")


class _Model:
    """Only what :func:`harmfulness` uses: ``generate`` and a ``tokenizer`` without a chat template."""

    tokenizer = None

    def generate(self, texts, **kw):
        return [f"response to {t}" for t in texts]


def test_plugs_into_harmfulness(server):
    url, _ = server
    rep = harmfulness(
        _Model(), ["[score=5] p1", "[score=1] p2", "[score=4] p3"], judge=_judge(url), chat=False
    )
    assert rep.judge.startswith("llm-rubric:judge-model@http://127.0.0.1:")
    assert rep.verdicts["score"].tolist() == [5.0, 1.0, 4.0]
    assert rep.refusal_rate == pytest.approx(1 / 3) and rep.compliance_rate == pytest.approx(2 / 3)


def test_rubric_parser_and_arguments(monkeypatch):
    assert hashlib.sha256(QI_RUBRIC.encode()).hexdigest() == QI_RUBRIC_SHA256
    assert QI_RUBRIC.count("******") == 1 and "#thescore: your score here." in QI_RUBRIC
    cases = {"#thescore: 5": 5, "#thereason: a\n#thescore:3": 3, "#thescore: **4**": 4, "#TheScore : 2.": 2,
             "#thescore: 0": None, "#thescore: 6": None, "#thescore: 10": None, "#thescore: 4.5": None,
             "score: 3": None, "": None}  # fmt: skip
    assert {k: parse_score(k) for k in cases} == cases
    assert chat_completions_url("http://h:1/v1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions/") == "http://h:1/v1/chat/completions"
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    bad = [
        (dict(url="ftp://x"), "url: 'ftp://x'"),
        (dict(model=""), "model:"),
        (
            dict(api_key_env="NO_SUCH_KEY_VAR"),
            "api_key_env: 'NO_SUCH_KEY_VAR' must name a set environment variable",
        ),
        (dict(timeout=0), "timeout: expected a number of seconds > 0"),
        (dict(retries=-1), "retries: expected an integer >= 0"),
        (dict(workers=0), "workers: expected an integer >= 1"),
        (dict(rubric="no mark"), "rubric: must contain the insert mark"),
    ]
    for kw, msg in bad:
        args = {"url": "http://127.0.0.1:1", "model": "m", **kw}
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            LLMJudge(args.pop("url"), args.pop("model"), **args)
    with pytest.raises(ValueError, match="got 2 prompts but 1 responses"):
        LLMJudge("http://127.0.0.1:1", "m").score(["a", "b"], ["r"])


def test_unreachable_server_fails_after_retries():
    """A refused connection is retried, then the item is counted as failed (nothing listens on port 9)."""
    s = LLMJudge("http://127.0.0.1:9", "m", timeout=0.5, retries=1, backoff=0.01).score(["p"], ["r"])
    assert (s.n_failed, s.results[0].attempts) == (1, 2) and "URLError" in s.results[0].detail
    assert s.mean_score != s.mean_score  # NaN: nothing parsable


def test_the_battery_scores_harm_with_the_configured_judge(server, tmp_path):
    """``judge: {kind: llm}``: greedy answers to the held-out harmful prompts, scored by the server."""
    from deltalens.study.battery.config import BatteryConfig
    from deltalens.study.battery.runner import Battery, Family

    url, log = server
    judge = {
        "kind": "llm",
        "url": url,
        "model": "judge-model",
        "api_key_env": "JUDGE_KEY",
        "max_new_tokens": 7,
    }
    b = Battery(BatteryConfig(judge=judge, n_harmful=4), tmp_path / "out", progress=False)
    want = [5, 4, 1, 5, 2]  # n_harmful = 4: the last one is not evaluated
    harmful = [f"[score={s}] battery {i}" for i, s in enumerate(want)]
    b.family = Family(paths={}, hashes={}, harmful=harmful, harmless=["hi"] * 4, arithmetic=[("1+1=", "2")] * 4,
                      template="Q: {prompt}\nA:")  # fmt: skip
    calls = []

    class Model:
        def generate(self, prompts, max_new_tokens, chat, template):
            calls.append((list(prompts), max_new_tokens, chat, template))
            return [f"answer to {p}" for p in prompts]

    out = b._llm_harm(Model(), ("harm", "utility"))
    assert calls == [(harmful[:4], 7, False, "Q: {prompt}\nA:")]
    assert out["harm_score"] == pytest.approx(statistics.mean(want[:4])) and out["harm_n5"] == 2.0
    assert out["harm_rate5"] == pytest.approx(0.5) and out["harm_unparsable"] == out["harm_failed"] == 0.0
    assert _requests(log, "battery 0")[0]["body"]["messages"][0]["content"].endswith(
        QI_RUBRIC.split("******")[1]
    )
    assert b._llm_harm(Model(), ("utility",)) == {}  # a sweep point that does not evaluate harm
    judges = {j["column"]: j["judge"] for j in b.judges()}
    assert judges["harm"].startswith("refusal-phrases") and judges["harm_score"] == b._llm_judge().name
    assert b._llm_judge_key()["llm_judge"]["model"] == "judge-model"
    # the offline default adds nothing to the evaluation keys (cached units stay valid)
    offline = Battery(BatteryConfig(), tmp_path / "o", progress=False)
    offline.family = b.family
    assert offline._llm_judge_key() == {} and offline._llm_judge() is None
    assert [j["column"] for j in offline.judges()] == ["harm", "refusal_harmful", "refusal_harmless"]
