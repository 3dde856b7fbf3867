"""A script that crashes at start, before any training."""

import time

import torch  # noqa: F401

time.sleep(1.0)
raise RuntimeError("crash at start")
