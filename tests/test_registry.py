"""The one registry shape behind judges, prompt sets and benign tasks."""

import pytest

from orthoguard.errors import ConfigError, DataError
from orthoguard.judges import JUDGES
from orthoguard.prompts import PROMPT_SETS
from orthoguard.registry import Registry
from orthoguard.tasks import TASKS


def test_a_taken_name_refuses_another_entry_but_takes_the_same_one_again():
    reg: Registry = Registry("widget")

    @reg.register("a")
    def first():
        return 1

    assert reg.register("a")(first) is first  # re-importing a module registers the same object again
    with pytest.raises(ValueError, match="widget 'a' is already registered by first"):
        reg.register("a")(lambda: 2)
    assert reg.names() == ["a"] and reg.lookup("a") is first


def test_an_unknown_name_is_an_error_that_lists_the_known_ones():
    reg: Registry = Registry("widget")
    reg.register("b")(int)
    reg.register("a")(str)
    with pytest.raises(ConfigError, match=r"unknown widget 'c' \(known: a, b\)"):
        reg.lookup("c")
    with pytest.raises(DataError, match="unknown widget"):
        reg.lookup("c", error=DataError)


def test_on_register_stamps_the_entry():
    reg: Registry = Registry("judge")

    @reg.register("mine", on_register=lambda cls: setattr(cls, "name", "mine"))
    class Mine:
        pass

    assert Mine.name == "mine"


def test_the_project_registries_use_it():
    assert all(isinstance(r, Registry) for r in (JUDGES, PROMPT_SETS, TASKS))
    assert {"keyword", "harmbench"} <= set(JUDGES) and {"sst2", "gsm8k"} <= set(TASKS)
