"""Records, the dataset format, loaders, phantom data, text vocabulary and site partitioning."""

from cxrsynth.data.dataset import DatasetReport, read_dataset, write_dataset
from cxrsynth.data.records import LABELS, Record

__all__ = ["LABELS", "Record", "DatasetReport", "read_dataset", "write_dataset"]
