"""tryssh: send an uncommitted change to a CI master over SSH and have it built."""

__version__ = "0.1.0"
