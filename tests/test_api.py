"""bon from Python: `import bon` is cheap and lists its API; a config from a file, a mapping or keywords; prompts
as a list; the run read as records and tables; judge, select and export as the CLI does them, with the same files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import bon
from tests.conftest import FakePolicy
from tests.helpers import bon as bon_cli
from tests.helpers import contents


def test_import_bon_loads_nothing_heavy_and_every_public_name_resolves():
    probe = "import sys, bon; print(sorted(m for m in ('torch', 'transformers', 'ray', 'bon.api') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert bon.__all__ == sorted(bon.__all__) and {"run", "Run", "load_config", "RunConfig"} <= set(bon.__all__)
    for name in bon.__all__:
        assert getattr(bon, name).__doc__, f"bon.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'runn'"):
        bon.runn  # noqa: B018


def test_a_config_from_a_file_a_mapping_or_keywords_is_the_same_validated_config(tmp_path):
    from_file = bon.load_config("configs/demo.yaml", n=4)
    as_mapping = bon.load_config(from_file.model_dump(mode="json"))
    assert from_file == as_mapping and from_file.n == 4
    made = bon.load_config(n=2, judge={"name": "length"}, overrides=["policy.temperature=0.5"])
    assert (made.n, made.judge.name, made.policy.temperature) == (2, "length", 0.5)
    with pytest.raises(bon.ConfigError, match=r"policy.temprature: unknown key; did you mean 'temperature'"):
        bon.load_config({"policy": {"temprature": 1.0}})
    with pytest.raises(bon.ConfigError, match=r"n: Input should be greater than or equal to 1"):
        bon.load_config(n=0)


def test_prompts_as_a_list_a_run_as_records_and_tables(tmp_path):
    cfg = bon.load_config(n=3, judge={"name": "length"}, output_dir=str(tmp_path / "run"))
    run = bon.run(cfg, ["What is 2+2?", {"instruction": "Name a colour.", "reference": "Blue."}], policy=FakePolicy())
    assert isinstance(run, bon.Run) and [p.instruction for p in run.prompts()] == ["What is 2+2?", "Name a colour."]
    assert len(run.candidates()) == 6 and len(run.judgements("length")) == 6 and len(run.selections()) == 2
    rows = run.rows()
    assert {"prompt_id", "instruction", "index", "text", "length", "chosen:length"} <= set(rows[0])
    assert sum(r["chosen:length"] for r in rows) == 2
    frame = run.to_pandas()
    assert len(frame) == 6 and frame.groupby("prompt_id")["chosen:length"].sum().tolist() == [1, 1]
    assert run.to_dataset().num_rows == 6
    stored = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["prompts"]["source"]
    assert stored.endswith("input_prompts.jsonl")  # the stored config names the prompts the run was given
    with pytest.raises(bon.ConfigError, match=r"prompts\[1\]: expected an instruction \(str\) or a row \(dict\)"):
        bon.run(cfg.model_copy(update={"output_dir": tmp_path / "other"}), ["ok", 3], policy=FakePolicy())


def test_judge_select_and_export_from_python_write_what_the_cli_writes(tmp_path, prompts_file):
    from tests.conftest import run_config

    made = {}
    for way in ("python", "cli"):
        cfg = run_config(tmp_path / way, prompts_file)
        bon.run(cfg, policy=FakePolicy())
        if way == "python":
            r = bon.Run(cfg.output_dir)
            assert r.judge("random", label="coin") == 15
            picks = r.select("coin", coverage=0.6)
            assert sum(not s.declined for s in picks) == 3
            r.export_sft(tmp_path / way / "sft", judge="coin")
        else:
            run_dir = str(cfg.output_dir)
            assert bon_cli("judge", run_dir, "--judge", "random", "--label", "coin").returncode == 0
            assert bon_cli("select", run_dir, "--judge", "coin", "--coverage", "0.6").returncode == 0
            assert (
                bon_cli("export", "sft", run_dir, "--out", str(tmp_path / way / "sft"), "--judge", "coin").returncode
                == 0
            )
        made[way] = contents(cfg.output_dir)
    for name in ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json"):
        assert made["python"][name] == made["cli"][name], name
    sft = [{k: v for k, v in contents(tmp_path / way / "sft").items() if k != "README.md"} for way in made]
    assert sft[0] == sft[1] and "state.json" in sft[0]  # the card names each run's own directory


def test_best_of_n_in_memory_keeps_what_a_run_keeps_and_loads_the_policy_once(tmp_path):
    cfg = bon.load_config(n=4, batch_size=2, judge={"name": "length"}, output_dir=str(tmp_path / "run"))
    prompts = ["What is 2+2?", "Name a colour.", {"instruction": "Say hi.", "id": "hi"}]
    policy = FakePolicy()
    with bon.BestOfN(cfg, policy=policy) as best:
        outcomes = best(prompts)
        again = best(prompts[:1], seed=cfg.seed + 1)
    assert policy.calls == 3  # two batches, then one: the same policy object throughout
    ran = bon.run(cfg, prompts, policy=FakePolicy())
    assert [o.selection for o in outcomes] == ran.selections()
    assert [c for o in outcomes for c in o.candidates] == ran.candidates()
    assert [j for o in outcomes for j in o.judgements] == ran.judgements()
    assert outcomes[2].prompt.id == "hi" and all(isinstance(o, bon.Outcome) for o in outcomes)
    best_of = outcomes[0]
    assert best_of.chosen is not None and best_of.chosen.index == best_of.ranked()[0][0].index
    pair = best_of.pair()
    assert pair is not None and pair[0] == best_of.chosen and pair[1] == best_of.ranked()[-1][0]
    assert again[0].candidates[0].seed != outcomes[0].candidates[0].seed  # a new seed draws new candidates
    with pytest.raises(RuntimeError, match="closed"):
        best(prompts)


def test_best_of_n_declines_by_coverage_over_a_call_and_refuses_what_it_cannot_do(tmp_path):
    best = bon.BestOfN({"n": 3, "judge": {"name": "length"}, "selection": {"coverage": 0.5}}, policy=FakePolicy())
    outcomes = best(["a?", "bb?", "ccc?", "dddd?"])
    assert sum(o.selection.declined for o in outcomes) == 2 and all(
        o.pair() is None for o in outcomes if o.chosen is None
    )
    with pytest.raises(bon.ConfigError, match=r"prompts\[1\]: the same prompt as prompts\[0\]"):
        best(["a?", "a?"])
    with pytest.raises(bon.ConfigError, match=r"prompts\[0\]: a conversation of 2 user turns"):
        best([{"turns": ["Hi.", "And then?"]}])
    with pytest.raises(bon.ConfigError, match=r"prompts\[0\]: expected an instruction"):
        best([3])
    with pytest.raises(bon.ConfigError, match=r"tie_break 'judge:length'"):
        bon.BestOfN({"judge": {"name": "length"}, "selection": {"tie_break": "judge:length"}})
    best.close()


@pytest.mark.slow
def test_best_of_n_on_smollm2_samples_what_bon_run_samples_and_a_model_in_memory_the_same(tmp_path):
    cfg = bon.load_config(n=2, judge={"name": "length"}, policy={"max_tokens": 8}, output_dir=str(tmp_path / "run"))
    prompts = ["Name a colour.", "Say hi."]
    with bon.BestOfN(cfg) as best:
        texts = [c.text for o in best(prompts) for c in o.candidates]
    assert texts == [c.text for c in bon.run(cfg, prompts).candidates()]
    model, tokenizer = bon.load_model(cfg.policy.model)
    model.train()
    with bon.BestOfN(cfg, model=model, tokenizer=tokenizer) as best:
        assert [c.text for o in best(prompts) for c in o.candidates] == texts
    assert model.training  # its mode is given back


def test_a_users_own_eval_and_judges_modules_do_not_shadow_bons(finished, tmp_path):
    project = tmp_path / "project"  # a user's script beside their own eval.py and judges.py
    project.mkdir()
    for name in ("eval", "judges"):
        (project / f"{name}.py").write_text(f"raise ImportError('the user\\'s {name}.py was imported')\n")
    (project / "main.py").write_text(
        "import bon\n"
        f"run = bon.Run({str(finished)!r})\n"
        "print(run.judge('length', label='again'))\n"
        f"print(run.export_sft({str(tmp_path / 'sft')!r}).rows)\n"
    )
    out = subprocess.run([sys.executable, "main.py"], cwd=project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["15", "5"]


@pytest.mark.slow
def test_a_run_from_python_and_one_from_the_cli_with_the_same_config_are_byte_identical(tmp_path, prompts_file):
    import yaml

    made = {}
    for way in ("python", "cli"):
        cfg = bon.load_config(
            n=2,
            judge={"name": "length"},
            policy={"max_tokens": 8},
            prompts={"source": str(prompts_file), "limit": 2},
            output_dir=str(tmp_path / way),
        )
        if way == "python":
            bon.run(cfg)
        else:
            path = tmp_path / "config.yaml"
            path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
            assert bon_cli("run", str(path)).returncode == 0
        made[way] = contents(tmp_path / way)
    assert sorted(made["python"]) == sorted(made["cli"])
    for name in made["python"]:
        if name != "manifest.json":  # it names its own output_dir and time
            assert made["python"][name] == made["cli"][name], name
    manifests = [json.loads(made[way]["manifest.json"]) for way in made]
    for m in manifests:  # apart from where and when it was made
        m["config"].pop("output_dir"), m.pop("created")
    assert manifests[0] == manifests[1]
