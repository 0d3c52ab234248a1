"""Shared test set-up: nothing reaches a model hub; every test's data dir is its own."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
