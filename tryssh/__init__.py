"""tryssh: send an uncommitted change to a CI master over SSH and have it built."""


def __getattr__(name: str) -> str:
    # ``tryssh.__version__`` is the installed package's (setup.cfg's), read only when asked:
    # importlib.metadata must stay off every start-up path.
    if name == "__version__":
        from importlib.metadata import version

        return version("tryssh")
    raise AttributeError(f"module 'tryssh' has no attribute {name!r}")
