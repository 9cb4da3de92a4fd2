"""Patches stack: each owner wraps what is there and takes away only its own layer, in any order."""

import functools
import types

from torchdoctor.agent.hooks.patching import ClassPatches


def tagging(log, tag):
    def make(original):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            log.append(tag)
            return original(*args, **kwargs)
        return wrapper
    return make


def owner():
    def f(x):
        return x + 1
    return types.SimpleNamespace(f=f), f


def test_two_owners_stack_and_each_is_heard():
    space, original = owner()
    log = []
    first, second = ClassPatches(), ClassPatches()
    first.wrap(space, "f", tagging(log, "first"))
    second.wrap(space, "f", tagging(log, "second"))
    assert space.f(1) == 2 and log == ["second", "first"]
    second.restore()
    first.restore()
    assert space.f is original


def test_a_lower_layer_removed_first_becomes_a_pass_through_then_goes_with_the_upper_one():
    space, original = owner()
    log = []
    lower, upper = ClassPatches(), ClassPatches()
    lower.wrap(space, "f", tagging(log, "lower"))
    upper.wrap(space, "f", tagging(log, "upper"))
    lower.restore()
    assert space.f(1) == 2 and log == ["upper"]  # the lower layer does nothing any more
    upper.restore()
    assert space.f is original  # no leftover pass-through


def test_a_foreign_wrapper_above_is_kept():
    space, original = owner()
    log = []
    ours = ClassPatches()
    ours.wrap(space, "f", tagging(log, "ours"))
    space.f = tagging(log, "script")(space.f)  # the script wraps it too (functools.wraps copies our attributes)
    foreign = space.f
    ours.restore()
    assert space.f is foreign and space.f(1) == 2 and log == ["script"]


def test_one_owner_wraps_an_attribute_once_and_classes_keep_their_methods():
    log = []

    class Model:
        def step(self):
            return "stepped"

    patches = ClassPatches()
    patches.wrap(Model, "step", tagging(log, "a"))
    patches.wrap(Model, "step", tagging(log, "b"))
    assert Model().step() == "stepped" and log == ["a"]
    patches.restore()
    assert "__torchdoctor_layer__" not in vars(Model.step)
    patches.wrap(Model, "missing", tagging(log, "c"))
    assert not patches.installed
