"""bon compare / bon eval pairwise on hand-made data: every number recomputed here, resume, errors."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bon.cli import app
from bon.core.config import ConfigError
from bon.core.io import DataFileError
from bon.core.records import Judgement
from bon.core.rundir import RunDirError
from bon.eval.benchmarks import load_pairwise, load_pool_benchmark, load_scores, spread_order, spread_subset
from bon.eval.compare import BenchmarkConfig, evaluate_pairwise_file, judge_benchmark, run_compare
from bon.eval.compare_report import write_compare_report
from bon.eval.judge_metrics import evaluate_pairwise, evaluate_pool, evaluate_scores
from bon.judges.pairwise import FIRST, PairVerdict
from bon.pipeline.executors import LocalExecutor

# five pairs: response lengths (r1, r2) and the human label
from tests.conftest import compare_config as _config


def test_scalar_pairwise_numbers(pair_file):
    bench = load_pairwise(pair_file)
    assert [it.group for it in bench.pairs] == [
        "Summarization",
        "Summarization",
        "Code",
        "Code",
        "General Communication",
    ]
    judgements = [
        Judgement(p.id, c.index, "length", float(len(c.text))) for p in bench.prompts for c in bench.candidates[p.id]
    ]
    r = evaluate_pairwise(bench, bench.prompts, "length", judgements=judgements, reps=200)
    # gaps 2, 5, 0, 2, 4: ties only at gap 0 for any threshold <= 2, so the search keeps 0.0 (60% right)
    assert r.tie_threshold == 0.0
    assert r.agreement == pytest.approx(60.0)
    assert r.agreement_no_tie == pytest.approx(200 / 3)  # items 0, 1 right of 0, 1, 3
    assert r.groups == {"Code": 50.0, "General Communication": 0.0, "Summarization": 100.0}
    assert r.prefers_longer == pytest.approx(100.0)
    assert r.length_spearman == pytest.approx(1.0)
    assert r.consistency is None and r.failed == 0
    # held-out: folds alternate within each label -> fold 0 = items 0, 1, 2; fold 1 = items 3, 4
    # fold 1 alone: no grid threshold gets either right -> 0.0, fold 0 all right; fold 0 alone -> 0.0, fold 1 all wrong
    assert r.heldout_thresholds == [0.0, 0.0] and r.heldout_agreement == pytest.approx(60.0)
    assert r.agreement_ci is None  # 5 pairs: under TOO_FEW, no interval is stated


class BiasedComparator:
    """Always prefers whatever is shown first: perfectly inconsistent."""

    name = "biased"

    def compare(self, items):
        return [PairVerdict(FIRST) for _ in items]


class LongerComparator:
    name = "longer"

    def compare(self, items):
        return [PairVerdict(2 if len(a) == len(b) else 0 if len(a) > len(b) else 1) for _, a, b in items]


def test_pairwise_judge_agreement_and_consistency(pair_file):
    bench = load_pairwise(pair_file)
    for judge, agree, consistent in ((BiasedComparator(), 0.0, 0.0), (LongerComparator(), 60.0, 100.0)):
        records = judge_benchmark(
            LocalExecutor(judge), judge, bench, bench.prompts, None, judge.name, 2, lambda k: None
        )
        assert [(c.first, c.second) for c in records[:2]] == [(0, 1), (1, 0)]
        r = evaluate_pairwise(bench, bench.prompts, judge.name, comparisons=records, reps=0)
        assert (r.agreement, r.consistency) == (pytest.approx(agree), pytest.approx(consistent))
        assert r.tie_threshold is None and r.aurc is None


def test_pool_numbers(pool_dir):
    bench = load_pool_benchmark(pool_dir)
    assert [p.reference for p in bench.prompts] == ["base"] * 3  # the baseline output is the reference
    judgements = [
        Judgement(p.id, c.index, "length", float(len(c.text))) for p in bench.prompts for c in bench.candidates[p.id]
    ]
    r = evaluate_pool(bench, bench.prompts, "length", judgements, reps=100)
    # length always picks b: wins 0, 1, 1 -> 66.67; random = mean of a (50) and b (66.67); oracle 1, 1, 1
    assert r.win_rate == pytest.approx(200 / 3, abs=0.01)
    assert r.reference_points["random"] == pytest.approx((50 + 200 / 3) / 2, abs=0.01)
    assert r.reference_points["oracle"] == pytest.approx(100.0)
    assert r.picks == {"a": 0, "b": 3} and r.longest_picked == 100.0
    assert r.mean_pick_length == 4.0 and r.mean_length == pytest.approx((1 + 2 + 1 + 12) / 6)
    assert r.baseline_length == len("base")  # the pool fixture's baseline answer
    # scores (len) 1, 4, 2, 4, 1, 4 vs wins 1, 0, 0, 1, .5, 1
    expected = __import__("bon.eval.metrics", fromlist=["correlations"]).correlations(
        [1, 4, 2, 4, 1, 4], [1, 0, 0, 1, 0.5, 1]
    )
    assert r.correlation == expected
    # confidence = pick score 4, 4, 4 (ties keep order) -> pick wins 0, 1, 1 -> risks 1, .5, 1/3
    assert r.aurc == pytest.approx((1 + 0.5 + 1 / 3) / 3)


def test_scores_numbers(tmp_path):
    path = tmp_path / "rated.jsonl"
    rows = [("q1", "a", 1.0), ("q1", "aaa", 3.0), ("q2", "aa", 2.0), ("q2", "aaaa", 5.0)]
    path.write_text("".join(json.dumps({"instruction": q, "output": o, "score": s}) + "\n" for q, o, s in rows))
    bench = load_scores(path)
    assert len(bench.prompts) == 2 and bench.values[bench.prompts[0].id] == [1.0, 3.0]
    judgements = [
        Judgement(p.id, c.index, "length", float(len(c.text))) for p in bench.prompts for c in bench.candidates[p.id]
    ]
    r = evaluate_scores(bench, bench.prompts, "length", judgements, reps=0)
    assert r.correlation.spearman == pytest.approx(1.0) and r.n == 4
    # quality scaled to [0, 1]: 0, .5, .25, 1; most confident first (len 4, 3, 2, 1) = 1, .5, .25, 0
    assert r.aurc == pytest.approx(((1 - 1) + (1 - 0.75) + (1 - 1.75 / 3) + (1 - 1.75 / 4)) / 4)
    assert r.aurc == pytest.approx(r.oracle_aurc)


def test_bad_pair_file_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"label": 0, "prompt": "q", "response 1": "a", "response 2": "b"}\n{"label": 5, "prompt": "q", "response 1": "a", "response 2": "b"}\n'
    )
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: field 'label'"):
        load_pairwise(path)
    path.write_text('{"label": 0, "prompt": "q", "response 1": "a"}\n')
    with pytest.raises(DataFileError, match=r"bad.jsonl:1: field 'response 2'"):
        load_pairwise(path)


def test_compare_run_report_resume_and_reuse(tmp_path, pair_file, pool_dir):
    cfg = _config(tmp_path, pair_file, pool_dir)
    result = run_compare(cfg, note=lambda m: None)
    md, js, pngs = write_compare_report(result)
    out = cfg.output_dir
    stored = {p.relative_to(out): p.read_bytes() for p in out.glob("judgements/*/*.jsonl")}
    assert set(map(str, stored)) == {
        "judgements/pairs/length.jsonl",
        "judgements/pairs/random.jsonl",
        "judgements/pool/length.jsonl",
        "judgements/pool/random.jsonl",
    }
    assert len(stored[Path("judgements/pairs/length.jsonl")].splitlines()) == 10
    report = md.read_text()
    assert (
        "## pairs (pairwise" in report and "## pool (pool" in report and "| length | 5 | 60.00 | " in report
    )  # no CI on 5
    data = json.loads(js.read_text())
    assert [r["judge"] for r in data["benchmarks"][0]["results"]] == ["length", "random"]
    assert data["benchmarks"][0]["agreement"]["kendall_tau"][0][0] == 1.0
    assert {p.name for p in pngs} >= {"risk_coverage_pairs.png", "agreement_pairs.png", "selector_pool.png"}
    # adding a judge reuses the stored judgements of the others byte for byte
    cfg2 = _config(
        tmp_path,
        pair_file,
        pool_dir,
        judges=[{"name": "length"}, {"name": "random"}, {"name": "random", "label": "random7", "options": {"seed": 7}}],
    )
    result2 = run_compare(cfg2, note=lambda m: None)
    for rel, content in stored.items():
        assert (out / rel).read_bytes() == content
    assert [r.judge for r in result2.benchmarks[1].results] == ["length", "random", "random7"]
    # the defaults written out are the same judge
    run_compare(
        _config(tmp_path, pair_file, pool_dir, judges=[{"name": "random", "options": {"seed": 0}}]), note=lambda m: None
    )
    # a label may not change its meaning
    cfg3 = _config(tmp_path, pair_file, pool_dir, judges=[{"name": "random", "options": {"seed": 1}}])
    with pytest.raises(RunDirError, match="judge 'random' was run as"):
        run_compare(cfg3, note=lambda m: None)


def test_torn_judgement_file_is_redone(tmp_path, pair_file, pool_dir):
    cfg = _config(tmp_path, pair_file, pool_dir, judges=[{"name": "length"}])
    first = run_compare(cfg, note=lambda m: None)
    path = cfg.output_dir / "judgements/pairs/length.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:6]) + lines[6][:20])  # three pairs kept, a fourth cut mid-line
    again = run_compare(cfg, note=lambda m: None)
    assert len(path.read_bytes().splitlines()) == 10
    assert again.benchmarks[0].results[0] == first.benchmarks[0].results[0]


def test_config_errors_name_the_key(tmp_path, pair_file, pool_dir):
    with pytest.raises(ConfigError, match="judge label 'length' is used twice"):
        _config(tmp_path, pair_file, pool_dir, judges=[{"name": "length"}, {"name": "length"}])
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        _config(tmp_path, pair_file, pool_dir, judges=[{"name": "length", "benchmarks": ["nope"]}])
    with pytest.raises(ConfigError, match=r"compare.yaml.*judges.0.name.*lenght"):
        _config(tmp_path, pair_file, pool_dir, judges=[{"name": "lenght"}])
    with pytest.raises(ConfigError, match="max_items 'nope'"):
        _config(tmp_path, pair_file, pool_dir, judges=[{"name": "length", "max_items": {"nope": 3}}])


def test_reference_judge_is_skipped_on_data_without_references(tmp_path, pair_file, pool_dir):
    cfg = _config(
        tmp_path, pair_file, pool_dir, judges=[{"name": "length"}, {"name": "cosine", "benchmarks": ["pairs"]}]
    )
    result = run_compare(cfg, note=lambda m: None)
    assert result.benchmarks[0].skipped == {"cosine": "needs a reference answer and this benchmark has none"}
    assert [r.judge for r in result.benchmarks[0].results] == ["length"]


def test_held_out_folds_share_ties_evenly():
    from types import SimpleNamespace

    from bon.eval.judge_metrics import _folds

    items = [SimpleNamespace(label=y) for y in (2, 2, 0, 2, 1, 0)]
    assert _folds(items, 2) == [0, 1, 0, 0, 0, 1]


def test_spread_subsets_are_even_and_nested():
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(spread_order(696)) == list(range(696))
    assert spread_subset(list(range(16)), 4) == [0, 4, 8, 12]
    assert spread_subset([1, 2], 5) == [1, 2]
    small, large = spread_subset(list(range(802)), 16), spread_subset(list(range(802)), 128)
    assert set(small) <= set(large)
    assert max(b - a for a, b in zip(small, small[1:])) <= 802 // 16 + 1


def test_eval_pairwise_cli_json(pair_file):
    out = CliRunner().invoke(app, ["eval", "pairwise", str(pair_file), "--judge", "length", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(data) == {"judge", "n", "agreement", "agreement_no_tie", "tie_threshold", "consistency"}
    assert data == {
        "judge": "length",
        "n": 5,
        "agreement": 60.0,
        "agreement_no_tie": 66.6667,
        "tie_threshold": 0.0,
        "consistency": None,
    }
    pairwise = evaluate_pairwise_file(
        pair_file, "pairwise", {"comparator": "scalar", "comparator_options": {"judge": "length"}}
    )
    assert pairwise.consistency == 100.0 and pairwise.agreement == pytest.approx(60.0)


def test_eval_pairwise_on_the_auto_j_dev_set(shared_data):
    """The length baseline's agreement on the real file, recomputed here from the raw JSON."""
    path = shared_data / "autoj" / "pairwise_dev.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    best = 0
    for t in [i / 100 for i in range(201)]:
        right = 0
        for r in rows:
            a, b = len(r["response 1"]), len(r["response 2"])
            pred = 2 if a == b or abs(a - b) < t else (0 if a > b else 1)
            right += pred == r["label"]
        best = max(best, 100 * right / len(rows))
    r = evaluate_pairwise_file(path, "length")
    assert r.n == 696 and r.agreement == pytest.approx(best)
    assert len(r.groups) == 8


def test_compare_cli_json(tmp_path, pair_file, pool_dir):
    cfg = _config(tmp_path, pair_file, pool_dir)
    out = CliRunner().invoke(app, ["compare", str(tmp_path / "compare.yaml"), "--json", "--set", "bootstrap=0"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert [b["name"] for b in data["benchmarks"]] == ["pairs", "pool"]
    assert data["benchmarks"][1]["results"][0]["win_rate"] == pytest.approx(66.6667, abs=0.01)
    report = (cfg.output_dir / "report.md").read_text()
    assert "risk @90%" in report and "vs length-matched pick" in report
    pool = data["benchmarks"][1]["results"][0]
    assert set(pool["risk"]) == {"1.0", "0.9", "0.8", "0.5"} and pool["vs_random"]["ci"] is None  # bootstrap=0


def write_leaderboard(folder):
    """Four models' outputs on two instructions and their leaderboard CSV (m1 has no v2 value)."""
    outputs = {"m1": ["a", "bb"], "m2": ["ccc", "dddd"], "m3": ["ee", "f"], "m4": ["gggggg", "hhhhhh"]}
    (folder / "outputs").mkdir(parents=True)
    for model, texts in outputs.items():
        rows = [
            {"instruction": q, "output": t, "generator": model, "dataset": "x"} for q, t in zip(["Q1?", "Q2?"], texts)
        ]
        (folder / "outputs" / f"{model}.json").write_text(json.dumps(rows))
    (folder / "leaderboard.csv").write_text("model,v1_win_rate,v2_win_rate\nm1,10,\nm2,30,5\nm3,20,1\nm4,40,2\n")
    return folder


def test_compare_report_with_a_leaderboard_benchmark(tmp_path, pair_file, pool_dir):
    board = write_leaderboard(tmp_path / "lb")
    cfg = _config(tmp_path, pair_file, pool_dir)
    cfg = cfg.model_copy(
        update={"benchmarks": [*cfg.benchmarks, BenchmarkConfig(name="lb", kind="leaderboard", path=str(board))]}
    )
    md, js, pngs = write_compare_report(run_compare(cfg, note=lambda m: None))
    assert "## lb (leaderboard" in md.read_text() and "leaderboard_lb.png" in {p.name for p in pngs}


def test_leaderboard_kind_ranks_models_by_mean_score(tmp_path):
    """Four models, two instructions, the length judge: means by hand, Spearman/Kendall against the CSV."""
    from bon.eval.benchmarks import load_leaderboard
    from bon.eval.judge_metrics import evaluate_leaderboard
    from bon.judges import build_judge

    bench = load_leaderboard(write_leaderboard(tmp_path), "lb")
    assert len(bench.prompts) == 2 and [c.policy for c in bench.candidates[bench.prompts[0].id]] == [
        "m1",
        "m2",
        "m3",
        "m4",
    ]
    judge = build_judge("length")
    judgements = [j for p in bench.prompts for j in judge.score([p], bench.candidates[p.id])]
    r = evaluate_leaderboard(bench, bench.prompts, "length", judgements, reps=200)
    assert r.means == {"m1": 1.5, "m2": 3.5, "m3": 1.5, "m4": 6.0} and r.instructions == 2 and r.failed == 0
    v1 = r.columns["v1_win_rate"]  # means rank m1=m3 < m2 < m4 against 10 < 20 < 30 < 40
    assert v1["n_models"] == 4 and v1["spearman"] == pytest.approx(0.9486833, abs=1e-6)
    assert v1["kendall"] == pytest.approx(0.9128709, abs=1e-6) and v1["spearman_ci"] is None  # 4 models: too few
    v2 = r.columns["v2_win_rate"]  # m1 has no v2 value: 3 models, means 3.5, 1.5, 6.0 against 5, 1, 2
    assert v2["n_models"] == 3 and v2["spearman"] == pytest.approx(0.5)


def test_leaderboard_csv_with_a_bad_number_names_line_and_field(tmp_path):
    from bon.core.io import DataFileError
    from bon.eval.benchmarks import load_leaderboard

    (tmp_path / "outputs").mkdir()
    (tmp_path / "leaderboard.csv").write_text("model,v1_win_rate\nm1,high\n")
    with pytest.raises(
        DataFileError, match=r"leaderboard.csv:2: field 'v1_win_rate': expected a number or empty, found 'high'"
    ):
        load_leaderboard(tmp_path)
