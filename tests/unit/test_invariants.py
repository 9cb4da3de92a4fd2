"""Whether a recovered run trained as asked: each invariant from the attempts' measured figures (pure)."""

from torchdoctor.reporters.summary_line import summary_line
from torchdoctor.reporters.text import recovery_facts, training_changes_short
from torchdoctor.supervisor.invariants import changes, training_invariants


def step(samples, loss=None, fingerprint=None, backwards=1, iterations=1, **extra):
    tally = {"samples": samples, "backwards": backwards, "iterations": iterations, **extra}
    if loss is not None:
        tally["loss"] = loss
    if fingerprint is not None:
        tally["fingerprint"] = fingerprint
    return tally


def figures(steps, samples, first=(), pending=None, name="SGD #0", **extra):
    base = {"updates": [{"name": name, "steps": steps, "samples": samples, "tokens": {}, "first": list(first),
                         "pending": pending}],
            "step_calls": steps, "backwards": steps, "iterations": steps, "reductions": {"mean": steps},
            "passes": [], "batchnorm": None, "closure": False, "settings": {}, "remedies": {}}
    base.update(extra)
    return base


ASKED = figures(0, {}, pending=step(1024, loss=2.5, fingerprint=10.0))  # died in step 1's backward


def by_key(invariants):
    return {i["key"]: i for i in invariants}


def test_a_dataloader_split_whose_passes_ran_to_the_end_kept_the_training():
    done = figures(8, {"1024": 8}, first=[step(1024, loss=2.5000001, fingerprint=10.0, backwards=2, iterations=2)],
                   step_calls=16, iterations=16, backwards=16,
                   passes=[{"loader": 0, "number": n, "batches": 4, "steps": 4, "exhausted": True, "length": 4}
                           for n in range(2)])
    plan = {"micro_batches": 2, "train_loaders": [0], "applied": ["micro-batch"]}
    found = by_key(training_invariants([{"training": ASKED}, {"training": done, "plan": plan}]))
    assert {k: v["status"] for k, v in found.items()} == {
        "optimizer_steps": "kept", "samples_per_step": "kept", "data_order": "kept", "numerics": "kept"}
    assert found["optimizer_steps"]["as_done"] == 8 and "ran to the end of the data (8 batches)" in \
        found["optimizer_steps"]["evidence"]
    assert "relative difference 4.0e-08" in found["numerics"]["evidence"]


def test_a_loop_that_left_its_loader_early_changed_its_step_count_and_says_by_how_much():
    done = figures(4, {"64": 4}, first=[step(64, backwards=2, iterations=2)], step_calls=9, iterations=9,
                   passes=[{"loader": 0, "number": 0, "batches": 4, "steps": 4, "exhausted": False, "length": 100}])
    plan = {"micro_batches": 2, "train_loaders": [0], "applied": ["micro-batch"]}
    invariants = training_invariants([{"training": figures(0, {}, pending=step(64))},
                                      {"training": done, "plan": plan}])
    steps = by_key(invariants)["optimizer_steps"]
    assert steps["status"] == "changed" and steps["as_asked"] == 9 and steps["as_done"] == 4
    assert "before its data ran out" in steps["evidence"]
    short = training_changes_short({"invariants": invariants})
    assert short.startswith("training changed: optimizer steps 4 (asked 9)")


def test_a_divided_batch_option_is_judged_by_the_loop_read_from_the_source():
    plan = {"micro_batches": 2, "batch_arg": "--batch_size", "batch_arg_size": 80, "applied": ["micro-batch"]}
    for bound, status in (("data", "kept"), ("count", "changed"), ("unknown", "unknown")):
        done = figures(10, {"80": 10}, step_calls=20, iterations=20,
                       loop={"header": "for i in range(n)", "where": "train.py:9", "bound": bound})
        steps = by_key(training_invariants([{"training": ASKED}, {"training": done, "plan": plan}]))["optimizer_steps"]
        assert steps["status"] == status, bound
    assert "train.py:9" in steps["evidence"]


def test_manual_updates_under_a_split_are_a_changed_training():
    done = figures(31, {"40": 31}, name="manual updates")
    plan = {"micro_batches": 2, "batch_arg": "--batch_size", "batch_arg_size": 80, "applied": ["micro-batch"]}
    found = by_key(training_invariants([{"training": figures(0, {}, pending=step(80), name="manual updates")},
                                        {"training": done, "plan": plan}]))
    assert found["optimizer_steps"]["status"] == "changed" and "no torch.optim optimizer" in \
        found["optimizer_steps"]["evidence"]
    assert found["samples_per_step"]["status"] == "changed"
    assert found["samples_per_step"]["as_asked"] == 80 and found["samples_per_step"]["as_done"] == 40


def test_mixed_precision_is_a_numerics_change_and_nothing_unmeasured_is_called_kept():
    done = figures(8, {"32": 8}, remedies={"autocast_forwards": 8})
    invariants = training_invariants([{"training": {}}, {"training": done, "plan": {"amp": "bf16",
                                                                                     "applied": ["amp"]}}])
    found = by_key(invariants)
    assert found["numerics"]["status"] == "changed" and "autocast" in found["numerics"]["evidence"]
    assert found["samples_per_step"]["status"] == "unknown"  # attempt 1 measured nothing to compare with
    assert found["data_order"]["status"] == "unknown"
    facts = recovery_facts({"remedies": ["amp"], "invariants": invariants, "restarted_from": "beginning",
                            "steps_redone": 1})
    assert "kept, measured: optimizer steps" in facts[1] and "samples" not in facts[1]
    assert any("numerics changed" in c for c in changes(invariants))


def test_other_data_in_the_first_step_is_a_data_order_change():
    done = figures(8, {"1024": 8}, first=[step(1024, loss=2.5, fingerprint=11.0)])
    found = by_key(training_invariants([{"training": ASKED}, {"training": done, "plan": {}}]))
    assert found["data_order"]["status"] == "changed"


def test_batchnorm_over_micro_batches_and_statistics_updated_twice_are_changes():
    asked = figures(0, {}, pending=step(64), batchnorm={"layers": 2, "forwards": 2, "largest_batch": 64})
    split = figures(4, {"64": 4}, batchnorm={"layers": 2, "forwards": 16, "largest_batch": 32, "updates": 16})
    assert by_key(training_invariants([{"training": asked}, {"training": split, "plan": {}}]))["batchnorm"][
        "status"] == "changed"
    twice = figures(4, {"64": 4}, batchnorm={"layers": 2, "forwards": 8, "largest_batch": 64, "updates": 16})
    assert "updated 16 times for 8" in by_key(training_invariants(
        [{"training": asked}, {"training": twice, "plan": {}}]))["batchnorm"]["evidence"]
    once = figures(4, {"64": 4}, batchnorm={"layers": 2, "forwards": 8, "largest_batch": 64, "updates": 8})
    assert by_key(training_invariants([{"training": asked}, {"training": once, "plan": {}}]))["batchnorm"][
        "status"] == "kept"


def test_checkpointing_numerics_are_kept_only_when_recomputations_were_compared():
    plan = {"checkpoint": True, "applied": ["checkpoint"]}
    checked = figures(12, {"32": 12}, remedies={"recomputed_checked": 32, "recomputed_differed": 0})
    assert by_key(training_invariants([{"training": {}}, {"training": checked, "plan": plan}]))["numerics"][
        "status"] == "kept"
    differed = figures(12, {"32": 12}, remedies={"recomputed_checked": 32, "recomputed_differed": 3})
    assert by_key(training_invariants([{"training": {}}, {"training": differed, "plan": plan}]))["numerics"][
        "status"] == "changed"


def test_the_quiet_line_shouts_when_the_training_changed_and_says_kept_only_when_measured():
    report = {"outcome": "success", "exit_code": 0, "steps": 4, "peaks": [], "run": {},
              "recovery": {"recovered": True, "remedies": ["micro-batch"],
                           "invariants": [{"key": "optimizer_steps", "status": "changed", "as_asked": 9,
                                           "as_done": 4, "evidence": "..."}]}}
    assert "TRAINING CHANGED: optimizer steps 4 (asked 9)" in summary_line(report)
    report["recovery"]["invariants"][0].update(status="kept")
    assert "training kept, as measured" in summary_line(report)
    report["recovery"]["invariants"] = None
    line = summary_line(report)
    assert "kept" not in line and "CHANGED" not in line


def test_when_attempt_1_died_before_a_loss_a_later_attempts_first_loss_is_the_reference():
    plan = {"micro_batches": 27, "micro_size": 39, "train_loaders": [0], "applied": ["micro-batch"]}
    died = figures(0, {}, pending=step(1024, fingerprint=10.0))  # out of memory in step 1's forward
    middle = figures(1, {"1024": 1}, first=[step(1024, loss=2.30848, fingerprint=10.0, backwards=4)])
    for loss, status in ((2.3084801, "kept"), (2.4, "changed")):
        done = figures(16, {"1024": 16}, first=[step(1024, loss=loss, fingerprint=10.0, backwards=27)])
        attempts = [{"training": died}, {"training": middle, "plan": {"micro_batches": 4, "micro_size": 277}},
                    {"training": done, "plan": plan}]
        numerics = by_key(training_invariants(attempts))["numerics"]
        assert numerics["status"] == status
        assert "that of attempt 2 (attempt 1 computed no loss; attempt 2 ran micro-batches of 277)" in \
            numerics["evidence"]
    # an attempt under autocast computed its losses in lower precision: not a reference
    attempts[1]["plan"]["amp"] = "bfloat16"
    assert by_key(training_invariants(attempts))["numerics"]["status"] == "unknown"
