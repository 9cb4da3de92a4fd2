from torchdoctor.agent.memory.schedule import SamplingSchedule


def test_exact_measures_every_step_and_off_none():
    exact = SamplingSchedule("exact", 3, 50)
    off = SamplingSchedule("off", 3, 50)
    assert all(exact.detailed(s) for s in range(1, 200))
    assert not any(off.detailed(s) for s in range(1, 200))


def test_sampled_measures_first_steps_then_every_nth_when_cheap():
    schedule = SamplingSchedule("sampled", 3, 10, budget=0.01)
    measured = []
    for step in range(1, 60):
        detailed = schedule.detailed(step)
        if detailed:
            measured.append(step)
        # plain steps take 1 s; a measured step costs only 1 ms more: no need to space windows out
        schedule.record(step, 1.001 if detailed else 1.0, detailed)
    assert measured == [1, 2, 3, 13, 23, 33, 43, 53]


def test_sampled_spaces_windows_out_when_measuring_is_expensive():
    schedule = SamplingSchedule("sampled", 2, 10, budget=0.01)
    measured = []
    for step in range(1, 400):
        detailed = schedule.detailed(step)
        if detailed:
            measured.append(step)
        # a measured step costs 1 s extra on 10 ms plain steps: 100x the plain step, so the next window
        # must wait 100 / 1% = 10,000 steps
        schedule.record(step, 1.01 if detailed else 0.01, detailed, census_seconds=0.0)
    assert measured == [1, 2, 12]
    assert schedule.detailed(12 + 10_000)
