"""The one global module forward hook pair of the process, shared by every part of the agent that needs to see
module calls (phases and module names while measuring, forward remedies for the whole run, the doctor's check of
an evaluation's first forward).

Global module hooks disable the module fast path for every module call, so the pair is registered only while at
least one subscriber wants it, and the depth of nested module calls (1: the outermost call, the model's own
forward) is counted once here for all of them. Subscribers are called in the order they subscribed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.nn.modules import module as module_hooks

Pre = Callable[[Any, Any, int], None]  # (module, args, depth of this call)
Post = Callable[[Any, int], None]  # (module, depth of the call that ended)


class Subscription:
    def __init__(self, calls: ForwardCalls, pre: Pre | None, post: Post | None) -> None:
        self._calls, self.pre, self.post = calls, pre, post

    def remove(self) -> None:
        self._calls.unsubscribe(self)


class ForwardCalls:
    def __init__(self) -> None:
        self.depth = 0
        self._subscriptions: tuple[Subscription, ...] = ()
        self._pres: tuple[Pre, ...] = ()
        self._posts: tuple[Post, ...] = ()
        self._handles: list[Any] = []

    def subscribe(self, pre: Pre | None = None, post: Post | None = None) -> Subscription:
        subscription = Subscription(self, pre, post)
        self._subscriptions += (subscription,)
        self._update()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        self._update()

    def _update(self) -> None:
        self._pres = tuple(s.pre for s in self._subscriptions if s.pre is not None)
        self._posts = tuple(s.post for s in self._subscriptions if s.post is not None)
        if self._subscriptions and not self._handles:
            self.depth = 0
            self._handles = [module_hooks.register_module_forward_pre_hook(self._pre),
                             module_hooks.register_module_forward_hook(self._post, always_call=True)]
        elif not self._subscriptions and self._handles:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self.depth = 0

    def _pre(self, module: Any, args: Any) -> None:
        self.depth += 1
        depth = self.depth
        for pre in self._pres:  # a tuple: a subscriber may leave while it is called
            pre(module, args, depth)

    def _post(self, module: Any, args: Any, output: Any) -> None:  # output is None on an exception
        depth = self.depth
        self.depth = max(0, depth - 1)
        for post in self._posts:
            post(module, depth)


FORWARD_CALLS = ForwardCalls()  # registers nothing until a subscriber comes
