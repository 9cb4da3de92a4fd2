"""The doctor over the labelled corpus: no false alarm, recall at least 0.95 (issue: the training-loop doctor)."""

import re

import pytest

from tests.doctor_corpus.evaluate import HERE, SHAPES, manifest, run_corpus, score, shapes

pytestmark = pytest.mark.e2e


def test_the_corpus_is_at_least_half_clean_and_every_buggy_script_has_a_fixed_twin():
    labels = manifest()
    assert sorted(labels) == sorted(p.name for p in HERE.glob("*.py") if p.name not in ("evaluate.py", "__init__.py"))
    clean = [name for name, ids in labels.items() if not ids]
    assert len(clean) * 2 >= len(labels)
    for name, ids in labels.items():
        if ids:
            twin = "clean_" + re.sub(r"^td\d+_", "", name).removesuffix(".py") + "_fixed.py"
            assert labels.get(twin) == [], f"{name} has no fixed twin {twin}"


def test_every_script_has_loop_shapes_and_every_check_three_buggy_scripts():
    labels, shaped = manifest(), shapes()
    assert sorted(shaped) == sorted(labels)
    assert all(s and set(s) <= set(SHAPES) for s in shaped.values())
    per_check: dict[str, int] = {}
    for ids in labels.values():
        for check_id in ids:
            per_check[check_id] = per_check.get(check_id, 0) + 1
    assert min(per_check.values()) >= 3, per_check


@pytest.mark.slow  # the whole corpus, 153 scripts: three minutes of one core; CI runs it with the slow tests
def test_precision_is_one_and_recall_at_least_095_over_the_corpus():
    outcomes = run_corpus()  # each script in a fresh process under the agent, forked with torch preloaded
    failed = [(o.script, o.stderr) for o in outcomes if o.returncode != 0]
    assert not failed, failed  # every script runs to the end under torchdoctor
    total, per_id = score(outcomes)
    wrong = [(o.script, sorted(o.expected), sorted(o.found)) for o in outcomes if o.found - o.expected]
    assert total.precision == 1.0, wrong
    missed = [(o.script, sorted(o.expected - o.found)) for o in outcomes if o.expected - o.found]
    assert total.recall >= 0.95, missed


def test_the_cli_finds_what_the_forked_agent_finds():
    # GIVEN a buggy script of each kind of hook (gradients, graph, loader passes, end of run) and two twins
    scripts = ["td101_no_zero_grad.py", "td109_total_loss_kept.py", "td112_train_in_eval_mode.py",
               "td116_bypassed_block.py", "clean_total_loss_kept_fixed.py", "clean_train_in_eval_mode_fixed.py"]
    # WHEN each runs under `torchdoctor run` (supervisor, report.json) and under the forked agent
    by_cli = {o.script: (o.found, o.returncode) for o in run_corpus(cli=True, scripts=scripts)}
    forked = {o.script: (o.found, o.returncode) for o in run_corpus(scripts=scripts)}
    # THEN both give the labelled findings
    assert by_cli == forked
    assert all(found == {s.split("_")[0].upper()} for s, (found, _) in by_cli.items() if s.startswith("td"))
    assert all(found == set() for s, (found, _) in by_cli.items() if s.startswith("clean"))
