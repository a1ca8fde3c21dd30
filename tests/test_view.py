"""`bon view`: one self-contained HTML page per run, its text kept as text, driven in a real headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from bon.core.io import write_records_atomic
from bon.core.records import Candidate
from bon.eval.view import page_json, run_data, write_view
from tests.browser import Browser, find_chromium
from tests.helpers import bon

CHROMIUM = find_chromium()
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: bash scripts/install-chromium.sh (scripts/test.sh runs it)"
)
HOSTILE = [
    "<script>window.pwned = 1</script>",
    "</textarea><img src=x onerror='window.pwned=2'>",
    '<a href="javascript:window.pwned=3">click</a>',
    "</script><script>window.pwned=4</script>",
    "\u2028 line separators \u2029 and &amp; entities &lt;",
    "x" * 1_000_000,  # a 1 MB line
]


def _hostile_run(run_dir: Path) -> None:
    """Give the run's first candidates (two prompts' worth, indices kept) the hostile texts."""
    from bon.core.io import read_records

    path = run_dir / "candidates.jsonl"
    cands = sorted(read_records(path, Candidate), key=lambda c: c.key)
    texts = dict(zip([c.key for c in cands], HOSTILE))
    write_records_atomic(path, [dataclasses.replace(c, text=texts.get(c.key, c.text)) for c in cands])


def test_page_json_cannot_close_its_script_element():
    text = page_json({"a": "</script><!-- & \u2028 \u2029 -->"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028 \u2029 -->"}


def test_view_of_a_run_holds_every_prompt_candidate_and_judgement(finished):
    data = run_data(finished)
    assert data["kind"] == "run" and data["main"] == "length" and data["overview"]["n"] == 3
    assert len(data["prompts"]) == 5 and all(len(p["candidates"]) == 3 for p in data["prompts"])
    first = data["prompts"][0]
    assert set(first["judgements"]) == {"length"} and first["selections"]["length"]["chosen"] in (0, 1, 2)
    path = write_view(finished)
    html = path.read_text()
    assert path == finished / "view.html" and html.count("<script") == 2  # the data and the page's own script
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # no network


def test_hostile_candidate_texts_stay_inside_the_data(finished):
    _hostile_run(finished)
    html = write_view(finished).read_text()
    assert html.count("<script") == 2 and "window.pwned" in html  # present, but only as escaped JSON
    data = re.search(r'<script type="application/json" id="bon-data">(.*?)</script>', html, re.S)
    assert data is not None
    shown = [c["text"] for p in json.loads(data.group(1))["prompts"] for c in p["candidates"]]
    assert all(text in shown for text in HOSTILE)


def test_bon_view_command_writes_the_page_and_refuses_a_missing_run(finished, tmp_path):
    out = bon("view", str(finished), "--out", str(tmp_path / "v.html"))
    assert out.returncode == 0 and (tmp_path / "v.html").is_file() and "open it in a browser" in out.stdout
    missing = bon("view", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a run directory" in missing.stderr
    nowhere = bon("view", str(finished), "--out", str(tmp_path / "no" / "v.html"))
    assert nowhere.returncode == 2 and f"the folder {tmp_path / 'no'} does not exist" in " ".join(
        nowhere.stderr.split()
    )


@needs_browser
def test_hostile_texts_render_as_text_in_the_browser(finished, tmp_path):
    _hostile_run(finished)
    page = write_view(finished)
    with Browser(CHROMIUM) as b:
        b.open(page)
        b.js("document.querySelectorAll('.prompt .head').forEach(h => h.click())")  # open every prompt
        texts = b.js("[...document.querySelectorAll('.candidate pre.text')].map(e => e.textContent)")
        assert b.js("window.pwned === undefined") and b.js("document.querySelectorAll('.candidate img').length") == 0
        assert all(text in texts for text in HOSTILE)  # verbatim, the 1 MB line included
        assert b.js("document.querySelectorAll('a').length") == 0
        assert b.console_errors() == []


@needs_browser
@pytest.mark.slow
def test_the_page_of_a_real_demo_run_in_a_browser(tmp_path):
    """SmolLM2 samples and Self-J judges (the demo, smaller); the page is checked as a user would use it."""
    run_dir = tmp_path / "demo"
    made = bon(
        "run", "configs/demo.yaml", "--set", "n=4", "--set", "policy.max_tokens=32", "--set", f"output_dir={run_dir}"
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert bon("view", str(run_dir)).returncode == 0
    data = run_data(run_dir)
    flagged = sum(any(j and j["flag"] for j in p["judgements"]["selfj"]) for p in data["prompts"])
    word = "photosynthesis"
    with_word = sum(
        word in (p["instruction"] + " ".join(c["text"] for c in p["candidates"])).lower() for p in data["prompts"]
    )
    with Browser(CHROMIUM) as b:
        b.open(run_dir / "view.html")
        assert b.js("document.getElementById('prompt-count').textContent") == "6"
        assert b.js("document.querySelectorAll('.prompt').length") == 6
        b.js("document.querySelector('.prompt .head').click()")
        assert b.js("document.querySelectorAll('.candidate').length") == 4
        chosen = b.js("[...document.querySelectorAll('.candidate.chosen')].map(e => e.dataset.index)")
        assert chosen == [str(data["prompts"][0]["selections"]["selfj"]["chosen"])]
        b.js("document.getElementById('f-flagged').click()")
        assert b.js("document.querySelectorAll('.prompt').length") == flagged
        b.js("document.getElementById('f-flagged').click()")
        b.js(
            f"(() => {{ const s = document.getElementById('search'); s.value = '{word}'; s.dispatchEvent(new Event('input')); }})()"
        )
        b.js("new Promise(r => setTimeout(r, 400))")  # the search waits 150 ms for typing to stop
        assert b.js("document.querySelectorAll('.prompt').length") == with_word >= 1
        assert b.console_errors() == []


def _compared(tmp_path, pair_file, pool_dir) -> Path:  # the fixtures, passed on
    from bon.eval.compare import run_compare
    from bon.eval.compare_report import write_compare_report
    from tests.conftest import compare_config as _config

    cfg = _config(tmp_path, pair_file, pool_dir)
    write_compare_report(run_compare(cfg, note=lambda m: None))
    return cfg.output_dir


def _human_disagreements(bench: dict) -> int:
    return sum(
        any(j != "human" and s["chosen"] != p["selections"]["human"]["chosen"] for j, s in p["selections"].items())
        for p in bench["prompts"]
    )


def test_view_of_a_comparison_puts_the_human_verdict_beside_every_judge(tmp_path, pair_file, pool_dir):
    from bon.eval.view import compare_data
    from tests.conftest import PAIRS

    data = compare_data(_compared(tmp_path, pair_file, pool_dir))
    pairs, pool = data["benchmarks"]
    assert (pairs["name"], pairs["kind"], pool["kind"]) == ("pairs", "pairwise", "pool")
    assert pairs["judges"] == ["human", "length", "random"] and len(pairs["prompts"]) == len(PAIRS)
    for item, (_, label, a, b) in zip(pairs["prompts"], PAIRS):
        human = item["selections"]["human"]
        assert human["chosen"] == (None if label == 2 else label)  # a tie is no pick
        assert [c["text"] for c in item["candidates"]] == [a, b]
    assert 0 < _human_disagreements(pairs) <= len(PAIRS)


@needs_browser
def test_the_page_of_a_comparison_switches_benchmarks_and_filters_disagreements(tmp_path, pair_file, pool_dir):
    from bon.eval.view import compare_data

    folder = _compared(tmp_path, pair_file, pool_dir)
    data = compare_data(folder)
    out = bon("view", str(folder))
    assert out.returncode == 0, out.stderr
    with Browser(CHROMIUM) as b:
        b.open(folder / "view.html")
        assert b.js("[...document.querySelectorAll('#benchmark option')].map(o => o.textContent)") == ["pairs", "pool"]
        b.js("document.getElementById('f-human').click()")
        assert b.js("Number(document.getElementById('shown-count').textContent)") == _human_disagreements(
            data["benchmarks"][0]
        )
        b.js(
            "(() => { const s = document.getElementById('benchmark'); s.value = '1'; s.dispatchEvent(new Event('change')); })()"
        )
        assert b.js("Number(document.getElementById('prompt-count').textContent)") == len(
            data["benchmarks"][1]["prompts"]
        )
        assert b.js("Number(document.getElementById('shown-count').textContent)") == _human_disagreements(
            data["benchmarks"][1]
        )
        assert b.console_errors() == []


@needs_browser
def test_a_prompt_missing_a_candidate_shows_each_score_beside_its_own_candidate(finished):
    """Judgements follow the candidates' order, not their indices: a prompt without candidate 0 still lines up."""
    from bon.core.io import read_records
    from bon.core.records import Judgement

    cands = read_records(finished / "candidates.jsonl", Candidate)
    judged = read_records(finished / "judgements.jsonl", Judgement)
    first = cands[0].prompt_id
    write_records_atomic(finished / "candidates.jsonl", [c for c in cands if c.key != (first, 0)])
    write_records_atomic(finished / "judgements.jsonl", [j for j in judged if j.key != (first, 0)])
    want = {str(j.candidate_index): f"score {j.score:.3f}".replace(".000", "") for j in judged if j.prompt_id == first}
    with Browser(CHROMIUM) as b:
        b.open(write_view(finished))
        b.js("document.querySelector('.prompt .head').click()")
        shown = b.js(
            "Object.fromEntries([...document.querySelectorAll('.candidate')].map(e =>"
            " [e.dataset.index, e.querySelector('.meta span:nth-of-type(2)').textContent]))"
        )
        assert shown == {k: v for k, v in want.items() if k != "0"}
        assert b.console_errors() == []


@needs_browser
def test_a_later_turn_shows_the_conversation_it_continues_in_the_browser(tmp_path):
    from bon.pipeline.runner import run
    from tests.conftest import FakePolicy
    from tests.test_conversations import conversation_config

    cfg = conversation_config(tmp_path)
    run(cfg, policy=FakePolicy())
    page = write_view(cfg.output_dir)
    with Browser(CHROMIUM) as b:
        b.open(page)
        assert b.js("document.querySelectorAll('.prompt').length") == 5  # three first turns, two second turns
        b.js("document.querySelector('.prompt[data-id=\"1:turn2\"] .head').click()")
        shown = b.js("document.querySelector('.prompt[data-id=\"1:turn2\"] .cands').textContent")
        assert "user: Write a haiku." in shown and "assistant: " in shown and "Now make it rhyme." in shown
        assert b.console_errors() == []


def test_an_unfinished_run_shows_what_is_there_and_says_it_is_unfinished(tmp_path, prompts_file):
    from bon.core.records import Selection
    from bon.core.rundir import FILES
    from bon.pipeline.runner import run
    from tests.conftest import FakePolicy, run_config
    from tests.helpers import bon

    cfg = run_config(tmp_path, prompts_file)
    run(cfg, policy=FakePolicy())
    lines = (cfg.output_dir / FILES[Selection]).read_text().splitlines()
    (cfg.output_dir / FILES[Selection]).write_text("\n".join(lines[:2]) + "\n")  # as if stopped after two prompts
    out = bon("view", str(cfg.output_dir))
    said = " ".join(out.stderr.split())
    assert out.returncode == 0 and "the run is unfinished: 3 of 5 prompts have no selection yet" in said
    html = (cfg.output_dir / "view.html").read_text()
    assert "the run is unfinished" in html and "Question number 4?" in html  # what is there is shown
