"""Paths the tests share: the repository root and its tools/ folder (on sys.path through tests/conftest.py)."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
