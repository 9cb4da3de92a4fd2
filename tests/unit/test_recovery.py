"""The recovery planner and the command-line rewriting: pure decisions on plain data."""

from torchdoctor.plan import Plan
from torchdoctor.supervisor.failures import command_line_batch, script_args_for, suggestions
from torchdoctor.supervisor.recovery_planner import Failure, LoaderInfo, RecoveryOptions, next_plan

TRAIN = (LoaderInfo(0, 256, True), LoaderInfo(1, 1024, False))


def test_evaluation_oom_gets_no_grad_first_and_keeps_the_training_batch():
    decision = next_plan(Plan(), Failure("oom", phase="evaluation", loaders=TRAIN), RecoveryOptions())
    assert decision.remedy == "eval-no-grad"
    assert decision.plan.eval_no_grad and decision.plan.micro_batches == 1 and decision.plan.attempt == 2


def test_training_oom_splits_the_training_loader_and_doubles_each_time():
    options = RecoveryOptions()
    first = next_plan(Plan(), Failure("oom", phase="backward", loaders=TRAIN), options)
    assert first.remedy == "micro-batch" and first.plan.micro_batches == 2 and first.plan.train_loaders == (0,)
    second = next_plan(first.plan, Failure("oom", phase="forward", loaders=TRAIN), options)
    assert second.plan.micro_batches == 3 and second.plan.applied == ("micro-batch", "micro-batch")
    third = next_plan(second.plan, Failure("oom", phase=None, loaders=TRAIN), options)
    assert third.plan.micro_batches == 5  # x1.5 steps: finer than halving


def test_an_oom_in_the_optimizer_step_or_after_training_is_not_met_with_smaller_batches():
    for phase in ("optimizer", "other"):
        decision = next_plan(Plan(), Failure("oom", phase=phase, loaders=TRAIN), RecoveryOptions(remedies=("micro-batch",)))
        assert decision.plan is None and f"the {phase} phase" in decision.reason


def test_exact_remedies_come_before_mixed_precision_unless_ordered_otherwise():
    failure = Failure("oom", phase="backward", loaders=(LoaderInfo(0, 8, True),))
    plan = Plan(micro_batches=8, train_loaders=(0,))  # cannot split 8 samples further
    assert next_plan(plan, failure, RecoveryOptions()).remedy == "amp"
    amp_first = RecoveryOptions(remedies=("amp", "micro-batch"))
    assert next_plan(Plan(), Failure("oom", phase="backward", loaders=TRAIN), amp_first).remedy == "amp"


def test_min_batch_size_and_max_retries_stop_the_search():
    failure = Failure("oom", phase="backward", loaders=TRAIN)
    assert next_plan(Plan(), failure, RecoveryOptions(min_batch_size=200, remedies=("micro-batch",))).plan is None
    stop = next_plan(Plan(attempt=4), failure, RecoveryOptions(max_retries=3))
    assert stop.plan is None and stop.reason == "--max-retries 3 reached"


def test_non_oom_failures_are_not_retried_and_a_script_needing_eval_grads_gets_them_back():
    assert next_plan(Plan(), Failure("other"), RecoveryOptions()).plan is None
    undo = next_plan(Plan(eval_no_grad=True), Failure("eval-needs-grad"), RecoveryOptions())
    assert undo.plan is not None and not undo.plan.eval_no_grad
    assert "eval-no-grad" not in undo.changes["remedies"]


def test_host_kill_caps_workers_then_relaunches():
    failure = Failure("host-kill", loaders=TRAIN, has_workers=True)
    decision = next_plan(Plan(), failure, RecoveryOptions())
    assert decision.remedy == "fewer-workers" and decision.plan.host_workers_cap == 0


def test_argument_batch_is_split_only_when_it_divides():
    ok = next_plan(Plan(), Failure("oom", phase="backward", argument=("--batch_size", 64)), RecoveryOptions())
    assert ok.plan.batch_arg == "--batch_size" and ok.plan.batch_arg_size == 64
    odd = next_plan(Plan(), Failure("oom", phase="backward", argument=("--bs", 7)), RecoveryOptions(remedies=("micro-batch",)))
    assert odd.plan.micro_batches == 7  # 7 has no divisor between 2 and 6: one sample per micro-batch
    prime = next_plan(Plan(), Failure("oom", phase="backward", argument=("--bs", 7)),
                      RecoveryOptions(remedies=("micro-batch",), min_batch_size=2))
    assert prime.plan is None


def test_script_args_are_rewritten_in_both_spellings():
    plan = Plan(micro_batches=4, batch_arg="--batch-size", batch_arg_size=256)
    assert script_args_for(("--lr", "1", "--batch-size", "256", "-v"), plan) == ["--lr", "1", "-v", "--batch-size=64"]
    assert script_args_for(("--batch-size=256",), plan) == ["--batch-size=64"]
    assert script_args_for(("--x",), Plan()) == ["--x"]


def test_key_value_batch_is_found_on_the_command_line():
    assert command_line_batch(("--batch_size=12", "--lr=3"), None) == ("--batch_size", 12)
    assert command_line_batch(("--tokens=12",), "--tokens") == ("--tokens", 12)
    assert command_line_batch(("--batch-size", "12"), None) is None


def test_suggestions_rank_by_estimated_saving():
    ideas = suggestions({"parameters": 100, "gradients": 0, "optimizer_state": 10, "activations_other": 1000})
    assert ideas[0].startswith("halve the batch") and len(ideas) == 3


def test_a_script_whose_batch_cannot_be_changed_is_told_so_and_gets_the_other_remedies():
    decision = next_plan(Plan(), Failure("oom", phase="backward"), RecoveryOptions())
    assert decision.remedy == "amp"
    assert any(p.startswith("micro-batch: no DataLoader") and "--batch-arg" in p for p in decision.passed_over)
    stop = next_plan(Plan(), Failure("oom", phase="backward"), RecoveryOptions(remedies=("micro-batch",)))
    assert stop.plan is None and "--batch-arg" in stop.reason


# -- remedies chosen from what the failed attempt measured ---------------------------------------------------------

def measured(**extra):
    """TrainingFigures of a failed attempt, as the supervisor hands them to the planner."""
    base = {"updates": [], "optimizers": [{"name": "AdamW", "params": 1000, "foreach": False}], "backwards": 1,
            "passes": [], "settings": {}, "blocks": 0, "closure": False, "batchnorm": None, "device": "cpu"}
    base.update(extra)
    return base


def test_activation_checkpointing_comes_before_micro_batches_when_the_model_has_blocks():
    failure = Failure("oom", phase="forward", loaders=TRAIN, training=measured(blocks=4))
    first = next_plan(Plan(), failure, RecoveryOptions())
    assert first.remedy == "checkpoint" and first.plan.checkpoint and first.plan.micro_batches == 1
    assert "eval-no-grad: the OOM was not in evaluation" in first.passed_over
    second = next_plan(first.plan, failure, RecoveryOptions())
    assert second.remedy == "micro-batch" and second.plan.checkpoint  # checkpointing stays on
    assert "checkpoint: already on" in second.passed_over


def test_the_scripts_own_accumulation_setting_is_used_before_splitting_its_loop():
    settings = {"batch": {"via": "global", "name": "--batch_size", "value": 12},
                "accumulation": {"via": "global", "name": "--gradient_accumulation_steps", "value": 5}}
    failure = Failure("oom", phase="backward", argument=("--batch_size", 12), training=measured(settings=settings))
    decision = next_plan(Plan(), failure, RecoveryOptions())
    plan = decision.plan
    assert decision.remedy == "micro-batch" and plan.accumulation == "script"
    assert (plan.micro_batches, plan.batch_arg, plan.accumulation_arg, plan.accumulation_size) == (
        2, "--batch_size", "--gradient_accumulation_steps", 5)
    assert script_args_for(("--out_dir=x",), plan) == ["--out_dir=x", "--batch_size=6",
                                                       "--gradient_accumulation_steps=10"]
    # when 2 micro-batches did not fit, the next division of 12 is 3 (equal micro-batches keep its scaling exact)
    again = next_plan(plan, failure, RecoveryOptions())
    assert again.plan.micro_batches == 3 and script_args_for((), again.plan) == [
        "--batch_size=4", "--gradient_accumulation_steps=15"]


def test_splitting_is_refused_where_it_would_change_the_training_and_says_why():
    cases = {
        "closure": (measured(closure=True), "takes a closure (LBFGS"),
        "batchnorm": (measured(batchnorm={"layers": 2}), "--allow-batchnorm-split"),
        "manual": (measured(optimizers=[]), "updates its parameters itself"),
        "endless": (measured(passes=[{"loader": 0, "number": 0, "batches": 3, "exhausted": False,
                                      "length": 10**9}]), "sampler is endless"),
        "left early": (measured(passes=[{"loader": 0, "number": 0, "batches": 3, "exhausted": False, "length": 50},
                                        {"loader": 0, "number": 1, "batches": 1, "exhausted": False, "length": 50}]),
                       "stops by its own count"),
    }
    for name, (training, why) in cases.items():
        decision = next_plan(Plan(), Failure("oom", phase="backward", loaders=TRAIN, training=training),
                             RecoveryOptions(remedies=("micro-batch",)))
        assert decision.plan is None and why in decision.reason, name
    allowed = next_plan(Plan(), Failure("oom", phase="backward", loaders=TRAIN,
                                        training=measured(batchnorm={"layers": 2})),
                        RecoveryOptions(remedies=("micro-batch",), allow_batchnorm_split=True))
    assert allowed.remedy == "micro-batch"


def test_a_batch_option_is_not_divided_for_a_loop_that_stops_by_its_own_count():
    loop = {"header": "while True", "where": "train.py:40", "bound": "count"}
    decision = next_plan(Plan(), Failure("oom", phase="backward", argument=("--batch_size", 64),
                                         training=measured(loop=loop)), RecoveryOptions())
    assert decision.remedy == "amp"
    assert any("while True, train.py:40" in p for p in decision.passed_over)


def test_an_optimizer_step_oom_gets_the_single_tensor_path_or_an_honest_give_up():
    foreach = measured(optimizers=[{"name": "AdamW", "params": 10, "foreach": True}])
    decision = next_plan(Plan(), Failure("oom", phase="optimizer", training=foreach), RecoveryOptions())
    assert decision.remedy == "optimizer-foreach" and decision.plan.foreach_off
    stop = next_plan(decision.plan, Failure("oom", phase="optimizer", training=foreach), RecoveryOptions())
    assert stop.plan is None and "no remedy acts on this OOM" in stop.reason
    assert "amp: the OOM was in the optimizer phase" in stop.reason  # autocast cannot help there: never tried


def test_an_evaluation_oom_already_under_no_grad_splits_the_evaluation_batches():
    failure = Failure("oom", phase="evaluation", loaders=TRAIN, oom={"loader": 1, "grad_enabled": False})
    decision = next_plan(Plan(), failure, RecoveryOptions())
    assert decision.remedy == "eval-split"
    assert decision.plan.eval_loaders == (1,) and decision.plan.eval_parts == 2
    assert decision.plan.micro_batches == 1  # the training batches are untouched
    assert "eval-no-grad: evaluation already ran under no_grad" in decision.passed_over


def test_a_remedy_the_script_fails_with_is_undone_and_the_next_one_tried():
    oom = Failure("oom", phase="backward", loaders=TRAIN, training=measured())
    amp = next_plan(Plan(), oom, RecoveryOptions(remedies=("amp", "micro-batch")))
    assert amp.remedy == "amp"
    broken = Failure("other", message="RuntimeError: Found dtype Float but expected BFloat16")
    decision = next_plan(amp.plan, broken, RecoveryOptions(remedies=("amp", "micro-batch")), previous=oom)
    assert decision.remedy == "micro-batch" and decision.plan.amp is None and "amp" in decision.plan.excluded
    assert decision.reason.startswith("amp made the script fail (RuntimeError: Found dtype Float")
    assert decision.plan.attempt == 3
    # a failure with no new remedy behind it is the script's own: passed through
    assert next_plan(Plan(), broken, RecoveryOptions(), previous=None).plan is None


def test_offload_is_for_a_gpu_only():
    failure = Failure("oom", phase="backward", training=measured(device="cuda"))
    assert next_plan(Plan(), failure, RecoveryOptions(remedies=("offload",))).remedy == "offload"
    cpu = next_plan(Plan(), Failure("oom", phase="backward", training=measured()), RecoveryOptions(remedies=("offload",)))
    assert cpu.plan is None and "not on a GPU" in cpu.reason


def test_micro_batch_size_comes_from_the_ooms_figures():
    # an MLP's OOM in backward at batch 1024 under 10 MiB: parameters 1.5 MiB, activations 7 MiB at the OOM;
    # SGD with momentum will add 1.5 MiB of state (bench/oom_recovery.py measures 788 as the largest that fits)
    oom = {"capacity_bytes": 10 << 20, "in_use_bytes": 8_960_000, "requested_bytes": 2 << 20,
           "breakdown": {"parameters": 1_597_480, "gradients": 20_520, "optimizer_state": 0,
                         "activations_other": 7_348_272},
           "top_tensors": [{"bytes": 1 << 20, "category": "parameters"}]}
    failure = Failure("oom", phase="backward", loaders=(LoaderInfo(0, 1024, True),), oom=oom,
                      training=measured(optimizers=[{"name": "SGD", "params": 399_370, "foreach": False,
                                                     "param_bytes": [40, 2048, 20480, 524288, 1048576]}]))
    decision = next_plan(Plan(), failure, RecoveryOptions())
    plan = decision.plan
    assert 700 <= plan.micro_size <= 788 and plan.micro_batches == 2  # not 512: as large as should fit
    # an OOM making a parameter's gradient in backward: accumulation's extra gradient binds, and counts
    transient = Failure("oom", phase="backward", loaders=failure.loaders, training=failure.training,
                        oom={**oom, "requested_bytes": 1048576})
    assert next_plan(Plan(), transient, RecoveryOptions()).plan.micro_size < plan.micro_size
    assert "estimated from the OOM's figures" in decision.reason and "(the last" in decision.reason
    # without figures (a GPU OOM with no breakdown): the next of 2, 3, 5... parts
    bare = next_plan(Plan(), Failure("oom", phase="backward", loaders=(LoaderInfo(0, 1024, True),)),
                     RecoveryOptions())
    assert bare.plan.micro_size == 512 and "the next split" in bare.reason


def test_a_late_oom_is_sized_from_a_completed_steps_peak_scaled_by_the_batchs_elements():
    # bench/oom_recovery.py's late case (figures as measured): 30 steps of 256 bags of 8 vectors completed, the
    # 31st batch holds a bag twice as long (padded: twice the elements per sample) and ran out mid-forward; the
    # largest micro-batch that fits with accumulation is 176
    oom = {"capacity_bytes": 12 << 20, "in_use_bytes": 9_545_852, "requested_bytes": 4 << 20,
           "breakdown": {"parameters": 307_240, "gradients": 0, "optimizer_state": 307_240,
                         "activations_other": 8_931_372}}
    pending = {"samples": 256, "items": 131072, "backwards": 0, "iterations": 0}
    updates = [{"name": "SGD #0", "steps": 30, "samples": {"256": 30}, "items": {"65536": 30}, "tokens": {},
                "first": [], "pending": pending}]
    training = measured(updates=updates, optimizers=[{"name": "SGD", "params": 76810, "foreach": False,
                                                      "param_bytes": [40, 1024, 10240, 32768, 262144]}])
    step_peak = {"step": 1, "bytes": 8_978_560, "breakdown": {"parameters": 307_240, "gradients": 10_280,
                                                              "optimizer_state": 0,
                                                              "activations_other": 8_661_040}}
    failure = Failure("oom", phase="forward", loaders=(LoaderInfo(1, 256, True),), oom=oom, training=training,
                      step_peak=step_peak)
    decision = next_plan(Plan(), failure, RecoveryOptions())
    assert 167 <= decision.plan.micro_size <= 176, decision.reason  # 0.95 of 176.7 (the estimate, unrounded)
    assert "step 1's measured peak, scaled by 2x the input elements per sample" in decision.reason
    # the OOM's own figures alone (mid-forward: a lower bound of the need) would have asked for more than fits
    alone = next_plan(Plan(), Failure("oom", phase="forward", loaders=failure.loaders, oom=oom, training=training),
                      RecoveryOptions())
    assert alone.plan.micro_size > 176 and "estimated from the OOM's figures" in alone.reason
    # completed steps of different elements per sample say little about the one that ran out: not used
    mixed = [{**updates[0], "samples": {"256": 30}, "items": {"65536": 20, "98304": 10}}]
    uneven = Failure("oom", phase="forward", loaders=failure.loaders, oom=oom, step_peak=step_peak,
                     training={**training, "updates": mixed})
    assert next_plan(Plan(), uneven, RecoveryOptions()).plan.micro_size == alone.plan.micro_size
