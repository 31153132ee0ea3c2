"""The tiny prepared release of the training tests, shared with the launch tests."""
from tests.training.conftest import prepared  # noqa: F401  (a session fixture)
