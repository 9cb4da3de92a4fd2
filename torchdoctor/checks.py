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
    Check(
        id="TD103", severity="error", title="optimizer.step() every micro-batch while gradients are reset every k",
        why=("Gradient accumulation sums k micro-batches' gradients and then takes one step. A loop that steps after "
             "every micro-batch but resets only every k micro-batches applies the running sum at each step: the "
             "first micro-batch's gradient is applied k times, the second k-1 times, and so on. The doctor fires "
             "when a step re-applies gradients an earlier step used, and a zero_grad of those parameters comes a "
             "few steps later (resets happen, only less often than steps)."),
        fix="step and reset together, once per accumulation window: if (i + 1) % k == 0: optimizer.step(); "
            "optimizer.zero_grad()",
        before=("loss = criterion(model(x), y) / k\n"
                "loss.backward()\n"
                "optimizer.step()\n"
                "if (i + 1) % k == 0:\n"
                "    optimizer.zero_grad()"),
        after=("loss = criterion(model(x), y) / k\n"
               "loss.backward()\n"
               "if (i + 1) % k == 0:\n"
               "    optimizer.step()\n"
               "    optimizer.zero_grad()"),
    ),
    Check(
        id="TD104", severity="warning", title="accumulated micro-batch losses are not divided by the number of "
                                              "micro-batches",
        why=("With gradient accumulation each backward pass adds its gradient to .grad. When each micro-batch's "
             "loss is a mean (the default reduction) and is not divided by the k micro-batches of the window, the "
             "step applies the sum of k mean gradients: k times the gradient of the whole batch's mean loss, so "
             "the effective learning rate is k times larger (for SGD; Adam partly hides it, weight decay does "
             "not). The doctor fires when one step follows k >= 2 backward passes over k different DataLoader "
             "batches, each from a mean-reduced loss node that was not multiplied or divided afterwards."),
        fix="divide each micro-batch's loss by the number of micro-batches in the window (loss / k) before "
            "backward()",
        before=("loss = criterion(model(x), y)\n"
                "loss.backward()"),
        after=("loss = criterion(model(x), y) / accumulation_steps\n"
               "loss.backward()"),
    ),
    Check(
        id="TD105", severity="warning", title="accumulated token-mean losses over micro-batches with very different "
                                              "token counts",
        why=("A token-level cross-entropy with ignore_index (padding) averages over each micro-batch's own valid "
             "tokens. Averaging those means over an accumulation window weighs a token of a short micro-batch more "
             "than a token of a long one: the gradient is not the mean over the window's tokens (the 2024 "
             "gradient-accumulation normalisation bug of several popular trainers). The doctor warns, with the "
             "counts, when the micro-batches of one window counted more than twice as many tokens as each other."),
        fix="sum the token losses (reduction='sum') and divide by the number of valid tokens in the whole window",
        before=("loss = F.cross_entropy(logits, targets, ignore_index=-100) / k"),
        after=("loss = F.cross_entropy(logits, targets, ignore_index=-100, reduction='sum') / window_tokens"),
    ),
    Check(
        id="TD106", severity="warning", title="a partial accumulation window at the end of an epoch leaks into the "
                                              "next epoch's first step",
        why=("When the number of batches is not a multiple of the accumulation steps, the last window of an epoch "
             "is short. If it is neither stepped nor reset, its gradients stay in .grad and are added to the "
             "first window of the next epoch: that step sums more micro-batches than the others, and the last "
             "batches of each epoch are applied late. The doctor fires when a training pass starts with backward "
             "passes not yet stepped and the next step comes with no zero_grad in between."),
        fix="step (or reset) the short last window: if (i + 1) % k == 0 or i + 1 == len(loader): step and reset",
        before=("if (i + 1) % k == 0:\n"
                "    optimizer.step()\n"
                "    optimizer.zero_grad()"),
        after=("if (i + 1) % k == 0 or i + 1 == len(loader):\n"
               "    optimizer.step()\n"
               "    optimizer.zero_grad()"),
    ),
    Check(
        id="TD107", severity="warning", title="LR scheduler stepped every micro-batch instead of every optimizer step",
        why=("A per-step schedule (warmup, cosine, OneCycle) counts optimizer steps. Stepping it once per "
             "micro-batch under gradient accumulation runs the schedule k times too fast: warmup ends after "
             "1/k of its steps and the decay reaches its end early. The doctor fires when a scheduler advanced "
             "exactly once per backward pass (k >= 2) between two steps of its optimizer."),
        fix="call scheduler.step() right after optimizer.step(), inside the accumulation condition",
        before=("if (i + 1) % k == 0:\n"
                "    optimizer.step()\n"
                "    optimizer.zero_grad()\n"
                "scheduler.step()"),
        after=("if (i + 1) % k == 0:\n"
               "    optimizer.step()\n"
               "    scheduler.step()\n"
               "    optimizer.zero_grad()"),
    ),
    Check(
        id="TD108", severity="warning", title="LR scheduler stepped before the optimizer",
        why=("Since PyTorch 1.1 scheduler.step() must come after optimizer.step(). Called before, every step uses "
             "the learning rate meant for the next one: the schedule's first value is skipped and the whole "
             "schedule is shifted by one step. The doctor fires when a scheduler was stepped by the script before "
             "the first optimizer.step() of its optimizer."),
        fix="call optimizer.step() first, then scheduler.step()",
        before=("scheduler.step()\n"
                "optimizer.step()"),
        after=("optimizer.step()\n"
               "scheduler.step()"),
    ),
    Check(
        id="TD109", severity="error", title="a loss or output is kept with its autograd graph across steps",
        why=("total_loss += loss (or losses.append(loss)) keeps the tensor and with it the whole autograd graph "
             "of every step: memory grows step after step until the run dies out of memory, and any later "
             "backward through it is wrong. The doctor marks each step's loss node and fires when the graphs of "
             "earlier steps are still alive several steps later; it names the variable that holds them and the "
             "line that made the kept tensor."),
        fix="keep a number, not the tensor: total_loss += loss.item() (or loss.detach())",
        before=("total_loss += loss"),
        after=("total_loss += loss.item()"),
    ),
    Check(
        id="TD110", severity="warning", title="evaluation runs with autograd on",
        why=("Forwards whose outputs require grad save their activations for a backward pass. In evaluation that "
             "backward never comes, so every evaluation batch holds its activations until its output is dropped: "
             "memory (often enough to OOM on large eval batches) and time wasted. The doctor fires when a pass "
             "over a DataLoader that never fed a backward pass makes outputs that require grad and no backward "
             "follows; it gives the bytes the graph kept."),
        fix="wrap evaluation in torch.no_grad() (or torch.inference_mode())",
        before=("model.eval()\n"
                "for x, y in val_loader:\n"
                "    out = model(x)"),
        after=("model.eval()\n"
               "with torch.no_grad():\n"
               "    for x, y in val_loader:\n"
               "        out = model(x)"),
    ),
    Check(
        id="TD111", severity="warning", title="evaluation in training mode",
        why=("In training mode Dropout drops activations and BatchNorm normalises with the batch's statistics and "
             "updates its running statistics: evaluation figures are noisy and wrong, and evaluating changes the "
             "model. The doctor fires when evaluation (a DataLoader that never fed a backward pass, after "
             "training began) runs a model in training mode that has Dropout or BatchNorm layers."),
        fix="call model.eval() before evaluation (and model.train() after it)",
        before=("with torch.no_grad():\n"
                "    for x, y in val_loader:\n"
                "        out = model(x)"),
        after=("model.eval()\n"
               "with torch.no_grad():\n"
               "    for x, y in val_loader:\n"
               "        out = model(x)\n"
               "model.train()"),
    ),
    Check(
        id="TD112", severity="error", title="training in eval mode after evaluation",
        why=("model.eval() for evaluation stays in force until model.train() is called. Training on after an "
             "evaluation without model.train() runs without dropout and with frozen BatchNorm statistics: "
             "regularisation is gone and BatchNorm layers do not adapt. The doctor fires when a model that trained "
             "in training mode was evaluated and its next optimizer step finds it still in eval mode with Dropout "
             "or BatchNorm layers."),
        fix="call model.train() at the start of every training epoch (or right after evaluation)",
        before=("for epoch in range(epochs):\n"
                "    train_one_epoch(model)\n"
                "    model.eval()\n"
                "    evaluate(model)"),
        after=("for epoch in range(epochs):\n"
               "    model.train()\n"
               "    train_one_epoch(model)\n"
               "    model.eval()\n"
               "    evaluate(model)"),
    ),
    Check(
        id="TD113", severity="error", title="a stale autograd graph is reused across optimizer steps",
        why=("A forward pass computed once and backpropagated at every step (retain_graph=True) keeps using the "
             "activations of the parameters as they were when it ran: after the first step its gradients are those "
             "of old weights. The doctor marks graph nodes when a backward pass runs through them and fires when a "
             "later backward pass runs through a node again after an optimizer step updated parameters below it."),
        fix="recompute the forward pass inside the loop, after every optimizer step",
        before=("out = model(x)\n"
                "for step in range(steps):\n"
                "    loss = criterion(out, y)\n"
                "    loss.backward(retain_graph=True)\n"
                "    optimizer.step()"),
        after=("for step in range(steps):\n"
               "    out = model(x)\n"
               "    loss = criterion(out, y)\n"
               "    loss.backward()\n"
               "    optimizer.step()"),
    ),
    Check(
        id="TD114", severity="warning", title="parameters get gradients but are in no optimizer",
        why=("Parameters the loss depends on get gradients in every backward pass, but if no optimizer holds them "
             "they never change: the layer stays at its initialisation (often a forgotten head or a module added "
             "after the optimizer was built). The doctor fires at the second step when trainable parameters of "
             "the trained models have gradients and no optimizer holds them."),
        fix="build the optimizer from model.parameters() after the model is complete (or add the missing "
            "param group); if they must not train, freeze them (requires_grad_(False)) or run them under no_grad",
        before=("optimizer = torch.optim.SGD(model.body.parameters(), lr=0.1)"),
        after=("optimizer = torch.optim.SGD(model.parameters(), lr=0.1)"),
    ),
    Check(
        id="TD115", severity="error", title="an optimizer's parameters never get gradients",
        why=("An optimizer steps only the tensors it was given. If the model was re-created or copied after the "
             "optimizer was built, or the loss was re-created as a new tensor (torch.tensor(loss.item(), "
             "requires_grad=True)), none of its parameters ever gets a gradient and nothing trains. The doctor "
             "fires when none of an optimizer's parameters got a gradient over several steps, and says which case "
             "it saw (same-shaped parameters with gradients in no optimizer, or a backward from a leaf tensor)."),
        fix="build the optimizer from the model that is trained, after its last re-creation, and call backward() "
            "on the loss tensor itself",
        before=("optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
                "model = copy.deepcopy(model)"),
        after=("model = copy.deepcopy(model)\n"
               "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)"),
    ),
    Check(
        id="TD116", severity="warning", title="some parameters never get a gradient",
        why=("Parameters in an optimizer that never receive a gradient during the whole run are not on the path "
             "from the loss: a block whose output is ignored (h = block2(x) instead of block2(h)), a branch "
             "never taken, an output detached by mistake. The doctor fires at the end of the run when some of an "
             "optimizer's parameters never got a gradient while the others did; modules used only on some steps "
             "got one on those steps and stay silent."),
        fix="check the forward pass: the module's output must reach the loss",
        before=("h = self.block1(x)\n"
                "h = self.block2(x)"),
        after=("h = self.block1(x)\n"
               "h = self.block2(h)"),
    ),
    Check(
        id="TD117", severity="error", title="gradients clipped before GradScaler.unscale_",
        why=("With a GradScaler the gradients after backward are multiplied by the loss scale (65536 at first). "
             "clip_grad_norm_ on them compares the scaled norm with your threshold, so it clips almost every step "
             "to a tiny update. The doctor fires when gradients of an optimizer are clipped while its enabled "
             "GradScaler has not unscaled them since the backward pass."),
        fix="call scaler.unscale_(optimizer) before clipping",
        before=("scaler.scale(loss).backward()\n"
                "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
                "scaler.step(optimizer)"),
        after=("scaler.scale(loss).backward()\n"
               "scaler.unscale_(optimizer)\n"
               "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
               "scaler.step(optimizer)"),
    ),
    Check(
        id="TD118", severity="error", title="NaN or inf in the loss or gradients",
        why=("A NaN or inf loss gives NaN gradients, and one optimizer step with them makes the parameters NaN for "
             "good. Common causes: NaN in the data, log or sqrt of zero or a negative number, a too high learning "
             "rate. The doctor checks the loss of every backward pass (on CUDA, watched steps, to avoid a sync) and "
             "the gradients of watched steps when no GradScaler skips non-finite steps, and names the first step "
             "and the first parameter with a non-finite gradient."),
        fix="find the first non-finite value (the data, a log/sqrt/division, the learning rate); "
            "torch.autograd.detect_anomaly() names the operation",
        before=("loss = criterion(model(x), y)  # x holds a NaN"),
        after=("x = torch.nan_to_num(x)  # or drop the sample\n"
               "loss = criterion(model(x), y)"),
    ),
    Check(
        id="TD119", severity="warning", title="tensor memory grows from epoch to epoch",
        why=("Tensors kept in a list or dict that is never cleared (outputs, features, detached losses) make "
             "memory rise every epoch until the run dies out of memory, hours in. The doctor measures the tensor "
             "memory at the start of every training pass and warns when it rose at each of several consecutive "
             "passes; it names what grew (shape, count, the variable holding it)."),
        fix="keep numbers (.item()) or clear the collection every epoch; move kept tensors to the CPU if they "
            "must stay",
        before=("history.append(model(x).detach())  # never cleared"),
        after=("for epoch in range(epochs):\n"
               "    history = []  # one epoch's outputs"),
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
