"""The adversarial tests reuse test_serve's running-server fixture."""

from test_serve import serve_factory  # noqa: F401  (a fixture, found by name)
