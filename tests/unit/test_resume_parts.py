"""The pure parts of run resume: loop position, training-state naming, decisions, pruning."""

import copy
import json

import torch
from torch import nn

from torchdoctor.agent.checkpoint import save_checkpoint
from torchdoctor.agent.hooks.constructions import Constructions
from torchdoctor.agent.hooks.loop_position import LoopPosition, generator_states, restore_generators
from torchdoctor.agent.resume.training_state import TrainingObjects
from torchdoctor.plan import Plan
from torchdoctor.supervisor.recovery_planner import Failure, RecoveryOptions, next_plan


class _Loader:
    persistent_workers = False
    num_workers = 0


def _pass(position, index, batches, steps):
    record = position.started(index, _Loader())
    for _ in range(batches):
        position.delivered(record, whole_batch=True)
    for _ in range(steps):
        position.stepped()
    return record


def test_history_says_which_passes_trained_and_only_the_newest_pass_keeps_its_rng():
    position = LoopPosition(keep_rng=True)
    peek = _pass(position, 0, batches=1, steps=0)  # a look at one batch before training
    first = _pass(position, 0, batches=12, steps=12)
    second = _pass(position, 0, batches=3, steps=3)
    assert position.history(0, before=2) == [False, True]
    assert peek.rng is None and first.rng is None and second.rng is not None
    assert position.evaluation_after_training() is None


def test_a_pass_without_training_after_training_began_is_evaluation():
    position = LoopPosition(keep_rng=False)
    _pass(position, 0, batches=12, steps=12)
    _pass(position, 1, batches=4, steps=0)  # the validation loader
    _pass(position, 0, batches=2, steps=2)
    assert "reads DataLoader #1 without training after training began" in position.evaluation_after_training()


def test_a_peek_before_training_is_not_evaluation_but_eval_mode_after_training_is():
    position = LoopPosition(keep_rng=False)
    _pass(position, 1, batches=1, steps=0)
    _pass(position, 0, batches=5, steps=5)
    assert position.evaluation_after_training() is None
    position.eval_mode_after_training = 1
    assert "puts its model in eval mode" in position.evaluation_after_training()


def test_loader_and_sampler_generators_are_captured_and_restored():
    gen = torch.Generator().manual_seed(3)
    loader = torch.utils.data.DataLoader(list(range(10)), shuffle=True, generator=gen)
    states = generator_states(loader)
    first = list(loader)
    restore_generators(loader, states)
    assert list(loader) == first


def _objects(*modules, optimizers=()):
    constructions = Constructions()
    for opt in optimizers:
        constructions.optimizers.add(opt)
    # the roots are given: a scan would also find modules other tests left alive in this process
    return TrainingObjects.find(constructions, roots=list(modules)), None


def test_modules_are_named_by_the_optimizer_that_holds_their_parameters():
    generator, discriminator = nn.Linear(4, 4), nn.Linear(4, 1)
    opt_g = torch.optim.Adam(generator.parameters())
    opt_d = torch.optim.Adam(discriminator.parameters())
    found, _ = _objects(generator, discriminator, optimizers=[opt_g, opt_d])
    assert found.modules["opt0.0"] is generator and found.modules["opt1.0"] is discriminator
    assert found.principal == "opt0.0" and found.ambiguous is None


def test_two_copies_outside_any_optimizer_are_ambiguous_and_a_different_model_does_not_match():
    model = nn.Linear(4, 2)
    ema_a, ema_b = copy.deepcopy(model), copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    found, _ = _objects(model, ema_a, ema_b, optimizers=[opt])
    assert "two Linear modules of the same shape outside any optimizer" in found.ambiguous
    saved = found.describe()
    other = nn.Linear(4, 3)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1)
    found2, _ = _objects(other, optimizers=[opt2])
    assert "differ" in found2.mismatch(saved) or "shapes" in found2.mismatch(saved)


def test_a_resume_that_was_abandoned_relaunches_from_the_beginning_even_past_max_retries():
    plan = Plan(attempt=4, resume_from="/run/checkpoints")
    decision = next_plan(plan, Failure("resume-abandoned", message="why"), RecoveryOptions(max_retries=3))
    assert decision.plan is not None and decision.plan.resume_from is None and decision.remedy == "restart"


def test_a_sigkill_that_was_not_the_oom_killer_relaunches_as_it_was():
    decision = next_plan(Plan(), Failure("host-kill", has_workers=True, oom_killer=False), RecoveryOptions())
    assert decision.remedy == "relaunch" and decision.plan.host_workers_cap is None


def test_pruning_removes_the_side_files_of_pruned_checkpoints(tmp_path):
    model = nn.Linear(2, 2)
    for _ in range(4):
        path = save_checkpoint(str(tmp_path), model=model, marker={"resume": {"resumable": True}})
        (tmp_path / f"{path.rsplit('/', 1)[1]}.next.json").write_text("{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-000000003.pt", "ckpt-000000003.pt.json", "ckpt-000000003.pt.next.json",
                     "ckpt-000000004.pt", "ckpt-000000004.pt.json", "ckpt-000000004.pt.next.json"]
    assert json.loads((tmp_path / "ckpt-000000004.pt.json").read_text())["resume"] == {"resumable": True}


def test_the_relaunch_message_names_the_checkpoint_the_agent_will_load_and_the_damaged_ones_skipped(tmp_path):
    import json as json_module

    from torchdoctor.files import sha256_of
    from torchdoctor.supervisor.resume_source import resume_source

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for step in (2, 4):
        path = directory / f"ckpt-{step:09d}.pt"
        path.write_bytes(b"checkpoint bytes %d" % step)
        marker = {"format": "torchdoctor.checkpoint", "file": path.name, "size": path.stat().st_size,
                  "sha256": sha256_of(str(path)), "step": step, "resume": {"resumable": True, "step": step}}
        (directory / f"{path.name}.json").write_text(json_module.dumps(marker))
    newest = directory / "ckpt-000000004.pt"
    newest.write_bytes(b"checkpoint bytes X")  # same size, other bytes: corrupt
    source, message = resume_source(str(tmp_path), checkpoint_every=2, blocked=None)
    assert source == str(directory / "ckpt-000000002.pt")  # the file every process of the next attempt loads
    assert message.startswith("resuming from the checkpoint of step 2, ckpt-000000002.pt (ckpt-000000004.pt "
                              "skipped: "), message
    assert "is corrupt" in message
    (directory / "ckpt-000000002.pt").write_bytes(b"short")
    source, message = resume_source(str(tmp_path), checkpoint_every=2, blocked=None)
    assert source is None and message.startswith("restarting from the beginning: no intact checkpoint")
