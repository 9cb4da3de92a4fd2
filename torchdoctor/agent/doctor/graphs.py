"""Autograd-graph checks, from the metadata dict autograd keeps on each graph node.

- TD109, a graph kept across steps: on watched steps the loss's graph node, and the nodes just below it that this
  step's forward made (by autograd's sequence numbers: a tensor made once, before, is not this step's), carry a
  probe (a weakly referenced object in ``node.metadata``), so a kept loss and kept outputs (``outputs.append(
  logits)``) are both seen (the loss node alone when the backward keeps its graph: ``retain_graph=True`` with
  the agent's saved-tensor hooks can keep a node that saved its own output alive). A node lives as long as
  anything holds its graph; when the graphs of two earlier
  steps are still alive at a later backward pass, something keeps every step's graph (``total += loss``). The
  holder is found once (a scan of live tensors for one whose graph reaches a probe), and autograd's anomaly mode
  is switched on for a step or two so the next kept tensor records the line that made it.
- TD113, a stale graph: on watched steps each node of the backward graph is marked with the step count. A node
  marked before an optimizer step that updated parameters below it is an old graph backpropagated again.
- TD118, NaN or inf: the loss of every backward pass on the CPU (on CUDA: watched steps, no sync otherwise), and the
  gradients of watched steps when no GradScaler is skipping non-finite steps; the first parameter named.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import graph_nodes, holder_of, node_metadata, param_names
from torchdoctor.agent.doctor.locations import code_location, traceback_location
from torchdoctor.agent.memory.live import live_tensors

PROBE = "torchdoctor.probe"
PROBED_NODES = 32  # nodes of a watched step's graph, nearest the loss first, that carry its probe
SEEN = "torchdoctor.seen"
LINE_WAIT = 4  # backward passes to wait for the kept tensor's line before reporting without it


class _Probe:
    __slots__ = ("step", "__weakref__")

    def __init__(self, step: int) -> None:
        self.step = step


@dataclass
class _Kept:
    steps: list[int]
    at_step: int
    where: str | None  # the backward call
    holder: str | None = None
    waited: int = 0
    anomaly: tuple[bool, bool] | None = None  # the anomaly mode to put back
    kinds: set[str] = field(default_factory=set)


class GraphChecks:
    def __init__(self, doctor: Any) -> None:
        self.doctor = doctor
        self._probes: list[tuple[int, weakref.ref[_Probe]]] = []
        self._kept: _Kept | None = None
        self._nonfinite: tuple[int, str | None, str] | None = None  # (step, where, value)
        self._sequence = -1  # the highest autograd sequence number probed so far: older nodes are not this step's

    # -- hooks -------------------------------------------------------------------------------------------
    def before_backward(self, loss: torch.Tensor | None, watched: bool, retain_graph: bool = False) -> None:
        if loss is None:
            return
        step = self.doctor.session.step + 1
        if self._nonfinite is None and "TD118" not in self.doctor.reported and (watched or not loss.is_cuda):
            if not _finite(loss):
                self._nonfinite = (step, code_location(), _value(loss))
        node = loss.grad_fn
        if node is None:
            return
        if self._kept is not None:
            self._follow_kept(step)
        if watched or self._kept is not None:
            self._check_kept(node, step, deep=not retain_graph)
        if watched:
            self._check_stale(node, step)

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, params_of: Any, watched: bool) -> None:
        if "TD118" in self.doctor.reported:
            return
        if self._nonfinite is not None:
            self._report_nonfinite(params_of(), None)
        elif watched and not self._scaler_enabled():
            grads = [p.grad for p in params_of() if p.grad is not None]
            if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
                self._report_nonfinite(params_of(), step)

    def finish(self) -> None:
        if self._nonfinite is not None and "TD118" not in self.doctor.reported:
            self._report_nonfinite([], None)
        if self._kept is not None:
            self._report_kept(None)

    # -- TD109 --------------------------------------------------------------------------------------------
    def _check_kept(self, node: Any, step: int, deep: bool) -> None:
        probe = _Probe(step)
        newest = self._sequence
        for found in _nearest(node, PROBED_NODES if deep else 1):
            sequence = found._sequence_nr()
            if found is node or sequence > self._sequence:
                found.metadata.setdefault(PROBE, probe)
                newest = max(newest, sequence)
        self._sequence = newest
        self._probes = [(s, ref) for s, ref in self._probes if ref() is not None][-16:]
        self._probes.append((step, weakref.ref(probe)))
        if self._kept is not None or "TD109" in self.doctor.reported:
            return
        alive = sorted({s for s, ref in self._probes if s <= step - 2 and ref() is not None})
        if len(alive) >= 2:
            self._kept = _Kept(alive, step, code_location())
            self._kept.holder, _ = self._find_holder(step)
            previous = (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())
            torch.autograd.set_detect_anomaly(True, check_nan=False)
            self._kept.anomaly = previous

    def _follow_kept(self, step: int) -> None:
        kept = self._kept
        assert kept is not None
        kept.waited += 1
        holder, line = self._find_holder(step)
        if line is not None or kept.waited >= LINE_WAIT:
            kept.holder = holder or kept.holder
            self._report_kept(line)

    def _find_holder(self, step: int) -> tuple[str | None, str | None]:
        """The name of a live tensor keeping an earlier step's graph, and the line that made it (if recorded)."""
        holders = []
        for tensor in live_tensors():
            node = tensor.grad_fn
            if node is None:
                continue
            for found in graph_nodes(node, limit=2_000):
                probe = found.metadata.get(PROBE) if found.name() != "torch::autograd::AccumulateGrad" else None
                if probe is not None and probe.step <= step - 2:
                    holders.append(tensor)
                    break
        name = line = None
        for tensor in holders:
            name = name or holder_of(tensor)
            node = tensor.grad_fn
            assert node is not None  # a holder's graph reached a probe
            trace = node_metadata(node).get("traceback_")
            if trace and line is None:
                line = traceback_location(trace)
        return name, line

    def _report_kept(self, line: str | None) -> None:
        kept, self._kept = self._kept, None
        assert kept is not None
        if kept.anomaly is not None:
            torch.autograd.set_detect_anomaly(*kept.anomaly)
        held = f"; {kept.holder} holds them" if kept.holder else ""
        made = (f" (the line that makes the kept tensor; backward at {kept.where})" if line
                else " (the backward call; the kept tensor's line was not seen)")
        steps = ", ".join(map(str, kept.steps))
        self.doctor.report("TD109", line or kept.where, (
            f"step {kept.at_step}: the autograd graphs of steps {steps} are still alive (one more every step: the "
            f"graph and everything it references grow with each step){held}; location{made}"))

    # -- TD113 --------------------------------------------------------------------------------------------
    def _check_stale(self, root: Any, step: int) -> None:
        steps_now = self.doctor.session.step
        stale = None
        nodes = []
        leaves = []
        for node in graph_nodes(root):
            if node.name() == "torch::autograd::AccumulateGrad":
                if isinstance(node.variable, torch.nn.Parameter):
                    leaves.append(node.variable)
                continue
            seen = node.metadata.get(SEEN)
            if seen is not None and seen < steps_now and stale is None and self._updated_below(node, seen):
                stale = (node, seen)
            nodes.append(node)
        for node in nodes:
            node.metadata[SEEN] = steps_now
        self.doctor.params.saw_leaves(leaves)
        if stale is not None:
            node, seen = stale
            self.doctor.report("TD113", code_location(), (
                f"step {step}: this backward pass went through a graph node ({node.name()}) that an earlier backward "
                f"pass, before step {seen + 1}, already used; the parameters below it were updated since, so its "
                f"saved activations and the gradients it gives are stale (the forward pass was not recomputed)"))

    def _updated_below(self, node: Any, seen: int) -> bool:
        leaves = {id(n.variable) for n in graph_nodes(node) if n.name() == "torch::autograd::AccumulateGrad"}
        if not leaves:
            return False
        for optimizer in self.doctor.session.constructions.optimizers.alive():
            if self.doctor.session.constructions.optimizers.record(optimizer).last_step > seen and any(
                    id(p) in leaves for group in optimizer.param_groups for p in group["params"]):
                return True
        return False

    # -- TD118 --------------------------------------------------------------------------------------------
    def _scaler_enabled(self) -> bool:
        return any(s.is_enabled() for s in self.doctor.session.constructions.scalers.alive())

    def _report_nonfinite(self, params: list[torch.Tensor], grads_step: int | None) -> None:
        bad = [p for p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        first = f"; first parameter with a non-finite gradient: {param_names(bad[:1])[0]}" if bad else ""
        count = f" ({len(bad)} of {len(params)} parameter tensors)" if bad else ""
        if grads_step is not None:
            self.doctor.report("TD118", code_location(), (
                f"step {grads_step}: the loss was finite but gradients are NaN or inf{first}{count}; "
                f"optimizer.step() applies them and the parameters become NaN"))
            return
        nonfinite, self._nonfinite = self._nonfinite, None
        assert nonfinite is not None
        step, where, value = nonfinite
        self.doctor.report("TD118", where, f"step {step}: the loss passed to backward() is {value}{first}{count}")


def _nearest(root: Any, limit: int) -> list[Any]:
    """Up to ``limit`` nodes of the graph below ``root``, breadth first (nearest the loss first), leaves left out."""
    found: list[Any] = []
    seen, queue = {id(root)}, [root]
    while queue and len(found) < limit:
        node = queue.pop(0)
        if node.name() == "torch::autograd::AccumulateGrad":
            continue
        found.append(node)
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                queue.append(child)
    return found


def _finite(loss: torch.Tensor) -> bool:
    if loss.numel() == 1 and not loss.is_cuda:
        return math.isfinite(loss.item())  # a few µs; torch.isfinite(...).all() dispatches three ops
    return bool(torch.isfinite(loss.detach()).all())


def _value(loss: torch.Tensor) -> str:
    flat = loss.detach().reshape(-1)
    bad = flat[~torch.isfinite(flat)]
    return str(float(bad[0])) if bad.numel() else "not finite"
