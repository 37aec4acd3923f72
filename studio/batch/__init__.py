"""Batches: one workflow run many times (sweeps, prompt lists, seeds) by warm workers,
local processes or Ray actors. No Qt; torch only inside the workers."""

from __future__ import annotations

from studio.batch.batch import Batch
from studio.batch.jobs import BatchError, Job, expand
from studio.batch.record import JobRecord

__all__ = ["Batch", "BatchError", "Job", "JobRecord", "expand"]
