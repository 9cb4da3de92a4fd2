"""The largest-batch search over fake runs (torchdoctor/estimating.py), on made-up peak lines: it finds the exact
answer, says when the script's data bounds the batch, and says when it stopped at its own limit."""

from torchdoctor.estimating import MAX_BATCH, BatchRuns, largest_batch


class Lines(BatchRuns):
    """Runs whose peak is a line per phase: forward a + b x batch, optimizer a constant; ``data`` caps the batch
    the script really makes."""

    def __init__(self, per_sample: int, fixed: int, data: int | None = None) -> None:
        super().__init__()
        self.per_sample, self.fixed, self.data = per_sample, fixed, data
        self.asked: list[int | None] = []

    def run(self, batch: int | None) -> dict:
        self.asked.append(batch)
        made = 16 if batch is None else batch
        if self.data is not None:
            made = min(made, self.data)
        phases = {"forward": self.fixed + self.per_sample * made, "optimizer": 2 * self.fixed}
        peak = max(phases.values())
        return {"batch_size": made, "peak_bytes": peak, "peak_phase": max(phases, key=phases.get),
                "by_phase": phases}


def test_the_answer_is_exact_and_the_next_batch_does_not_fit():
    runs = Lines(per_sample=1000, fixed=50_000)
    runs.at(None)
    answer = largest_batch(runs, 1_000_000, 16)
    assert answer["batch_size"] == 950 and answer["first_over"]["batch_size"] == 951
    assert answer["peak_bytes"] <= 1_000_000 < answer["first_over"]["peak_bytes"]
    assert "limited_by" not in answer and answer["runs"] <= 6  # the lines' guess, checked with its neighbour


def test_a_script_whose_data_holds_fewer_samples_is_bounded_by_its_data():
    runs = Lines(per_sample=10, fixed=1000, data=2048)
    runs.at(None)
    answer = largest_batch(runs, 10**12, 16)
    assert answer["limited_by"] == "data" and answer["batch_size"] == 2048
    assert answer["first_over"] == {**answer["first_over"], "batch_size": 2049, "batch_seen": 2048}
    assert answer["runs"] <= 8


def test_a_search_that_reaches_its_limit_says_the_answer_is_a_lower_bound():
    runs = Lines(per_sample=1, fixed=1)
    runs.at(None)
    answer = largest_batch(runs, 10**15, 16)
    assert answer["limited_by"] == "search" and answer["batch_size"] == MAX_BATCH
    assert "first_over" not in answer and max(b for b in runs.asked if b is not None) <= MAX_BATCH
