import pytest

from .helpers import small_stack, tiny_model


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture
def stack():
    return small_stack()
