"""torchrun's options on `torchdoctor run`: checked before anything runs, handed to torch's launcher as given; and
where each rank's files go (pure logic, no processes)."""

from __future__ import annotations

import pytest

from torchdoctor.config import AgentSettings, Rank, rank_path
from torchdoctor.errors import UsageError
from torchdoctor.supervisor.torchrun_options import OPTIONS, REFUSED, launch_command, launcher_args, option_key


def given(**values: object) -> dict[str, object]:
    return {f"torchrun_{name}": value for name, value in values.items()}


def test_options_go_to_the_launcher_in_torchruns_own_spelling():
    args = launcher_args(given(nproc_per_node="2", standalone=True, max_restarts="0", nnodes="1:2",
                               rdzv_endpoint="host:29400", redirects="3", tee=None, virtual_local_rank=False))
    assert args == ("--nproc-per-node", "2", "--nnodes", "1:2", "--standalone", "--rdzv-endpoint", "host:29400",
                    "--max-restarts", "0", "--redirects", "3")


def test_no_option_given_means_one_process_without_the_launcher():
    assert launcher_args({}) == ()
    assert launcher_args(given(nproc_per_node=None, standalone=False)) == ()


def test_every_torchrun_spelling_is_declared_once_with_its_underscore_twin():
    names = [name for option in OPTIONS for name in option.names] + [n for names in REFUSED for n in names]
    assert len(names) == len(set(names))
    assert "--nproc_per_node" in names and "--max_restarts" in names and "-r" in names
    assert all(not name.startswith("__") for name in names)
    assert len({option.key for option in OPTIONS}) == len(OPTIONS)


@pytest.mark.parametrize(("values", "message"), [
    (given(nproc_per_node="two"), "--nproc-per-node takes a number of processes of 1 or more"),
    (given(nproc_per_node="0"), "--nproc-per-node takes a number of processes"),
    (given(nnodes="3:1"), "--nnodes takes a number of nodes (2) or a range MIN:MAX"),
    (given(nnodes="1:2:3"), "--nnodes takes a number of nodes"),
    (given(max_restarts="-1"), "--max-restarts takes a number of 0 or more, not -1"),
    (given(master_port="70000"), "--master-port takes a number from 0 to 65535, not 70000"),
    (given(node_rank="first"), "--node-rank takes a whole number, not 'first'"),
    (given(monitor_interval="0"), "--monitor-interval takes a positive number of seconds"),
    (given(monitor_interval="inf"), "--monitor-interval takes a positive number of seconds"),
    (given(start_method="thread"), "--start-method takes one of spawn, fork, forkserver"),
])
def test_a_value_torchrun_would_refuse_is_refused_first(values, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        launcher_args(values)


@pytest.mark.parametrize("names", list(REFUSED))
def test_options_about_how_the_script_starts_are_refused_with_why(names):
    with pytest.raises(UsageError) as caught:
        launcher_args({option_key(names): True, "torchrun_nproc_per_node": "2"})
    assert names[0] in str(caught.value)


def test_nproc_words_torchrun_knows_pass():
    for word in ("auto", "cpu", "gpu", "xpu", "8"):
        assert launcher_args(given(nproc_per_node=word)) == ("--nproc-per-node", word)


def test_each_rank_runs_the_agents_command_as_it_is():
    rank = ["/py", "-c", "BOOT", "-m", "pkg.train", "--lr", "1"]
    command = launch_command("/py", "LAUNCH", ("--nproc-per-node", "2"), rank)
    assert command == ["/py", "-c", "LAUNCH", "--nproc-per-node", "2", "--no-python", *rank]


def test_rank_is_read_from_torchruns_variables_only_when_all_are_there():
    assert Rank.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == Rank(3, 1, 4)
    assert Rank.from_env({"RANK": "3", "WORLD_SIZE": "4"}) is None
    assert Rank.from_env({"RANK": "x", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) is None
    assert Rank.from_env({}) is None


def test_each_rank_but_the_machines_first_writes_its_own_files():
    settings = AgentSettings(events_path="/run/events.jsonl", fault_log="/run/faulthandler.log")
    assert settings.for_rank(None) == settings
    assert settings.for_rank(Rank(2, 0, 4)) == settings  # the first process of the second machine: the run's files
    ranked = settings.for_rank(Rank(3, 1, 4))
    assert ranked.events_path == "/run/events-rank3.jsonl"
    assert ranked.fault_log == "/run/faulthandler-rank3.log"
    assert rank_path(None, 1) is None
