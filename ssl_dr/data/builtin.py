"""The built-in dataset as a data source: generate the synthetic APTOS-layout folder once, then read it
with the same reader (APTOS settings) real APTOS data uses (so the built-in path exercises the real one)."""

from __future__ import annotations

from pathlib import Path

from ssl_dr.data.csv_source import CsvSource
from ssl_dr.data.synthetic import write_synthetic_dataset
from ssl_dr.errors import DataError


class SyntheticSource(CsvSource):
    """``data=synthetic``: a deterministic synthetic fundus set written under ``root`` on first use."""

    def __init__(self, root: str | Path, num_labelled: int, num_unlabelled: int, image_size: int,
                 seed: int) -> None:
        super().__init__(root, unlabelled_tables=[{"csv": "test.csv", "image_dir": "test_images"}])
        self.num_labelled = num_labelled
        self.num_unlabelled = num_unlabelled
        self.image_size = image_size
        self.seed = seed

    def prepare(self) -> None:
        """Write the folder (a no-op when a matching one already exists)."""
        try:
            write_synthetic_dataset(self.root, num_labelled=self.num_labelled, num_unlabelled=self.num_unlabelled,
                                    image_size=self.image_size, seed=self.seed)
        except ValueError as err:  # bad sizes, or a folder holding another dataset: the message says which
            raise DataError(f"built-in dataset: {err}") from err
