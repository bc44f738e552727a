import pytest

from tests._napari.helpers import small_stack, tiny_model


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture
def stack():
    return small_stack()


@pytest.fixture
def user(make_napari_viewer, qtbot):
    """A :class:`tests._qt.user.User` on a shown napari viewer (``user.viewer``): real mouse and
    key events on its canvas and docks."""
    from tests._qt.user import User

    return User(make_napari_viewer(show=True), qtbot)
