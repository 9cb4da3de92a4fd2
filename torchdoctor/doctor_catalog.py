"""The training-loop bugs the doctor proves, by stable id: what ``torchdoctor explain ID`` prints and what every
finding of that id says. No torch here (the CLI and the reporters read it)."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Check:
    id: str
    severity: str  # "error" | "warning" | "info"
    title: str
    why: str  # the long explanation
    fix: str  # one line, in every finding
    before: str  # a minimal snippet with the bug
    after: str  # the same snippet fixed


CATALOG: dict[str, Check] = {c.id: c for c in (
    Check(
        id="TD101", severity="error", title="gradients are not reset between optimizer steps",
        why=("PyTorch adds every backward pass's gradients to the .grad already there. A gradient that fed one "
             "optimizer step and was not reset (optimizer.zero_grad(), or set to None) feeds the next step too, "
             "added to the new one: each step applies the sum of all earlier gradients, the effective learning "
             "rate grows step after step and training diverges or stalls. The doctor follows each parameter's "
             "gradient: it fires when a gradient an optimizer step used is still there, not zero, when the next "
             "backward pass starts, and the next step of an optimizer holding that parameter uses it. Intentional "
             "gradient accumulation (several backward passes, then one step, then a reset) never fires it. It also "
             "catches partial resets: model.zero_grad() while the loss module has weights in the optimizer, or only "
             "one of two optimizers reset."),
        fix="call optimizer.zero_grad() once per optimizer step (for every optimizer), before the backward passes "
            "of the next step",
        before=("for x, y in loader:\n"
                "    loss = criterion(model(x), y)\n"
                "    loss.backward()\n"
                "    optimizer.step()"),
        after=("for x, y in loader:\n"
               "    optimizer.zero_grad()\n"
               "    loss = criterion(model(x), y)\n"
               "    loss.backward()\n"
               "    optimizer.step()"),
    ),
    Check(
        id="TD102", severity="error", title="zero_grad() between backward() and step(): the step sees no gradient",
        why=("optimizer.zero_grad() resets the gradients the backward pass just computed (to None by default), so "
             "the optimizer.step() that follows has nothing to apply: the parameters never change (or only weight "
             "decay and momentum act). The doctor fires when an optimizer steps after a backward pass, a "
             "zero_grad() ran after that backward pass, and every gradient the optimizer holds is None or zero."),
        fix="move zero_grad() before the forward pass (or after optimizer.step())",
        before=("loss.backward()\n"
                "optimizer.zero_grad()\n"
                "optimizer.step()"),
        after=("optimizer.zero_grad()\n"
               "loss.backward()\n"
               "optimizer.step()"),
    ),
)}


def explain(check_id: str) -> str:
    """The long explanation of one check, with a before/after snippet."""
    check = CATALOG[check_id.upper()]
    indent = lambda text: "\n".join("    " + line for line in text.splitlines())  # noqa: E731
    return (f"{check.id} ({check.severity}): {check.title}\n\n{check.why}\n\nFix: {check.fix}.\n\n"
            f"Before:\n{indent(check.before)}\n\nAfter:\n{indent(check.after)}\n")


def at_or_above(severity: str, level: str) -> bool:
    """Whether a finding of ``severity`` counts for ``--fail-on level``."""
    return SEVERITIES.index(severity) <= SEVERITIES.index(level)
