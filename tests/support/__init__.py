"""Helpers several test folders share (a project with a trained run, a local S3 server), importable as `support.*`
because pyproject puts tests/ on pytest's path."""
