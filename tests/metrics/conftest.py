"""Fixtures of the metric tests."""
import pytest


@pytest.fixture(autouse=True)
def metric_tests_run_on_one_thread(one_thread):
    """Every metric test uses tests/conftest.py's ``one_thread``."""
