"""`bon eval alpaca-eval` and `bon eval gain` on small runs, checked against hand-made annotations."""

import json

import pytest

from bon.core.records import Candidate
from bon.core.rundir import RunDir
from bon.eval.alpaca import AnnotatorError, run_alpaca_eval
from bon.eval.gain import gain_report, ks_for
from tests.conftest import finished_ae_run

QUESTIONS = [f"Question number {i}?" for i in range(6)]


@pytest.fixture
def small_run(tmp_path):
    """A finished run (n=4, length judge) over six prompts, and baseline outputs for them."""
    return finished_ae_run(tmp_path, QUESTIONS, "n=4", "batch_size=3")


def preference_of(text: str) -> float:
    """The hand-made verdict: a candidate wins (2) when its text ends in x's, else loses (1)."""
    return 2.0 if text.endswith("x") else 1.0


def write_annotations(cfg, path):
    from bon.core.prompts import load_prompts

    cands = RunDir(cfg.output_dir).read(Candidate)
    prompts = {p.id: p for p in load_prompts(cfg.prompts)}
    rows = [
        {
            "instruction": prompts[c.prompt_id].instruction,
            "output_1": "Baseline.",
            "generator_1": "base",
            "output_2": c.text,
            "generator_2": "m",
            "preference": preference_of(c.text),
        }
        for c in cands
    ]
    path.write_text(json.dumps(rows))
    return cands, prompts


def test_precomputed_annotations_give_alpaca_eval_win_rate(small_run, tmp_path):
    cfg, reference = small_run
    write_annotations(cfg, tmp_path / "ann.json")
    outputs = json.loads((cfg.output_dir / "model_outputs.json").read_text())
    expected = 100 * sum(preference_of(o["output"]) - 1 for o in outputs) / len(outputs)
    result = run_alpaca_eval(cfg.output_dir, 2, f"precomputed:{tmp_path / 'ann.json'}", reference)
    assert result.winrate.win_rate == pytest.approx(expected) and result.winrate.n_total == 6
    assert "805" in result.winrate.lc_note


def test_official_annotator_needs_a_key(small_run, monkeypatch):
    cfg, reference = small_run
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEYS", raising=False)
    with pytest.raises(AnnotatorError, match="set OPENAI_API_KEY"):
        run_alpaca_eval(cfg.output_dir, 1, None, reference)
    assert not (cfg.output_dir / "alpaca_eval" / "v1" / "annotations_cache.json").exists()
    with pytest.raises(AnnotatorError, match="unknown annotator 'gpt5'.*did you mean 'gpt4'"):
        run_alpaca_eval(cfg.output_dir, 1, "gpt5", reference)
    with pytest.raises(AnnotatorError, match="unknown annotator 'zzz'") as unknown:
        run_alpaca_eval(cfg.output_dir, 1, "zzz", reference)
    assert "did you mean" not in str(unknown.value)  # nothing close
    with pytest.raises(AnnotatorError, match="did you mean 'weighted_alpaca_eval_gpt4_turbo'"):
        run_alpaca_eval(cfg.output_dir, 1, "weighted_alpaca_eval_gpt4_trubo", reference)


def test_gain_curve_by_hand(tmp_path):
    cfg, reference = finished_ae_run(tmp_path, [f"Question number {i}?" for i in range(12)], "n=4", "batch_size=3")
    cands, prompts = write_annotations(cfg, tmp_path / "ann.json")
    report = gain_report(cfg.output_dir, 2, f"precomputed:{tmp_path / 'ann.json'}", reference, rounds=200)
    assert report.prompts == 12  # at least TOO_FEW: CIs and p-values are stated
    by_prompt = {}
    for c in cands:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    points = {p.label: p for p in report.points}
    assert [p.k for p in report.points if p.k] == ks_for(4) == [1, 2, 4]
    first_wins = []
    for k in (1, 2, 4):  # best-of-k under the length judge: the longest of the first k (lowest index on ties)
        wins, sizes = [], []
        for group in by_prompt.values():
            best = max(group[:k], key=lambda c: (len(c.text), -c.index))
            wins.append(preference_of(best.text) - 1)
            sizes.append(len(best.text))
        first_wins = first_wins or wins
        point = points[f"k={k}"]
        assert point.win_rate == pytest.approx(100 * sum(wins) / len(wins))
        assert point.ci_low <= point.win_rate <= point.ci_high
        assert point.mean_length == pytest.approx(sum(sizes) / len(sizes))  # the length beside every win rate
        if k > 1:  # paired over the same prompts: the gain is the difference of the two means
            assert point.vs_first.delta == pytest.approx(100 * (sum(wins) - sum(first_wins)) / len(wins))
            assert point.vs_first.ci[0] <= point.vs_first.delta <= point.vs_first.ci[1]
    assert points["k=1"].vs_first is None and points["random candidate"].vs_random is None
    assert report.baseline_length == pytest.approx(len("Baseline."))
    # the length judge picks the longest of 4: a pick at the same length rank is the same answer
    assert points["length-matched random"].win_rate == points["k=4"].win_rate and report.vs_length_matched.delta == 0
    assert report.png.is_file() and report.png.stat().st_size > 1000
    text = report.markdown.read_text()
    assert "| k=4 |" in text and "random candidate" in text and "vs k=1 (pp)" in text and "mean length" in text


def test_gain_on_too_few_prompts_states_no_ci_and_no_p_value(small_run, tmp_path):
    from bon.eval.gain import summary_lines

    cfg, reference = small_run  # six prompts
    write_annotations(cfg, tmp_path / "ann.json")
    report = gain_report(cfg.output_dir, 2, f"precomputed:{tmp_path / 'ann.json'}", reference, rounds=200)
    assert all(p.ci_low is None and p.ci_high is None for p in report.points)
    assert all(g.p_value is None for p in report.points for g in (p.vs_first, p.vs_random) if g is not None)
    said = " ".join(summary_lines(report)) + report.markdown.read_text()
    assert "too few (n=6)" in said and "p=" not in said and "p<" not in said
    assert report.png.stat().st_size > 1000  # the curve is drawn without a band


def test_gain_reports_declines_apart(small_run, tmp_path):
    cfg, reference = small_run
    write_annotations(cfg, tmp_path / "ann.json")
    from bon.pipeline.rejudge import select_run

    select_run(cfg.output_dir, "length", decline_below=1e9)  # the rewritten manifest keeps the run's config
    report = gain_report(cfg.output_dir, 2, f"precomputed:{tmp_path / 'ann.json'}", reference, rounds=50)
    assert all(p.declined == 0 for p in report.points)  # gain uses the run's own selection settings


@pytest.mark.slow
def test_local_annotator_smoke_and_cache(small_run, monkeypatch):
    from bon.eval.alpaca import LocalAnnotator

    cfg, reference = small_run
    asked: list[int] = []  # prompts that reached the local model, per call
    real = LocalAnnotator.__call__
    monkeypatch.setattr(
        LocalAnnotator, "__call__", lambda self, prompts, **kw: asked.append(len(prompts)) or real(self, prompts, **kw)
    )
    first = run_alpaca_eval(cfg.output_dir, 2, "local:embedded:SmolLM2-135M-Instruct", reference)
    assert "plumbing smoke test" in first.note
    assert sum(asked) == len(first.annotations) and all(a.preference is not None for a in first.annotations)
    cache = cfg.output_dir / "alpaca_eval" / "v2" / "annotations_cache.json"
    assert cache.is_file()
    again = run_alpaca_eval(cfg.output_dir, 2, "local:embedded:SmolLM2-135M-Instruct", reference)
    assert sum(asked) == len(first.annotations)  # answered from the cache: the model was asked nothing more
    # alpaca-eval's cache keeps ten decimals
    assert [a.preference for a in again.annotations] == pytest.approx(
        [a.preference for a in first.annotations], abs=1e-9
    )


def test_gain_says_in_one_line_why_no_lc_win_rate_stands_beside_the_raw_ones(small_run, tmp_path):
    cfg, reference = small_run
    write_annotations(cfg, tmp_path / "ann.json")
    missing = tmp_path / "no.csv"
    report = gain_report(
        cfg.output_dir, 2, f"precomputed:{tmp_path / 'ann.json'}", reference, rounds=50, lc_data=missing
    )
    assert all(p.lc_win_rate is None for p in report.points) and "no.csv does not exist" in report.lc_note
    assert "Length-controlled win rate unavailable" in report.markdown.read_text()


def test_gain_and_compare_print_a_short_summary_within_80_columns_and_the_report_path(
    small_run, tmp_path, pair_file, pool_dir
):
    from tests.conftest import compare_config
    from tests.helpers import bon

    cfg, reference = small_run
    write_annotations(cfg, tmp_path / "ann.json")
    annotator = f"precomputed:{tmp_path / 'ann.json'}"
    narrow = {"COLUMNS": "80"}
    gain = bon(
        "eval",
        "gain",
        str(cfg.output_dir),
        "--annotator",
        annotator,
        "--reference-outputs",
        str(reference),
        env_extra=narrow,
    )
    compare_config(tmp_path, pair_file, pool_dir)
    compare = bon("compare", str(tmp_path / "compare.yaml"), "--set", "bootstrap=20", env_extra=narrow)
    for out, path in ((gain, "gain/gain.md (the full table)"), (compare, "report.md (the full report)")):
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        folded = "".join(out.stdout.split())  # a path longer than the line is folded onto the next
        assert path.replace(" ", "") in folded and "|---" not in out.stdout and "![" not in out.stdout
        assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "k=4: win rate %" in gain.stdout and "pairs (pairwise, 5 items):" in compare.stdout
