"""The commands set up logging (``logging.basicConfig(force=True)``): undo it
after each test, so that no handler outlives the test's captured streams."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("ucal.cluster", "ucal.active", "ucal.oracles", "ucal.annotation")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
