"""Processor code: Python callables, commands in other languages, code from git at a pinned
commit, and isolated environments for processors with requirements."""

from .loader import check_code, code_problems, load

__all__ = ["check_code", "code_problems", "load"]
