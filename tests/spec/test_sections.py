"""The spec's sections (fcdm.spec.sections) agree with what they name elsewhere."""
from fcdm.launchers import LAUNCHERS
from fcdm.spec.sections import LAUNCHER_NAMES


def test_launcher_names_are_the_registry():  # the spec keeps its own copy: it must not import the launchers
    assert LAUNCHER_NAMES == tuple(LAUNCHERS)
