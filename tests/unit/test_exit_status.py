import signal

from torchdoctor.supervisor.failures import exit_status


def test_script_exit_codes_pass_through_unchanged():
    assert exit_status(0, None, None) == (0, "success", None)
    assert exit_status(3, "SystemExit", None) == (3, "failed", None)
    assert exit_status(1, "ValueError", None) == (1, "failed", None)


def test_signals_become_128_plus_n():
    assert exit_status(-signal.SIGKILL, None, None) == (137, "killed", "SIGKILL")
    assert exit_status(-signal.SIGSEGV, None, None) == (139, "killed", "SIGSEGV")
    assert exit_status(-signal.SIGINT, "KeyboardInterrupt", None) == (130, "interrupted", "SIGINT")


def test_interrupts_are_reported_as_such():
    assert exit_status(130, "KeyboardInterrupt", None) == (130, "interrupted", None)
    assert exit_status(1, None, signal.SIGTERM) == (1, "interrupted", None)
