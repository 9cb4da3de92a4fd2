"""The public names (``torchdoctor.X`` in README and docs) resolve wherever their modules live."""

import torchdoctor


def test_every_public_name_resolves():
    for name in torchdoctor.__all__:
        assert getattr(torchdoctor, name) is not None, name
    assert callable(torchdoctor.oom_retry) and callable(torchdoctor.watch) and callable(torchdoctor.save_checkpoint)
