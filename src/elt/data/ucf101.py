"""UCF-101 at the spec's setting (16 frames, 128×128, 101 classes).

This issue fixes the shapes (config, tokenizer grid, model sizes); reading the real videos is
the next data issue (webdataset shards of decoded clips). Until then the module says so at once,
after naming the local directory it would read, rather than training on anything else.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L

HOW_TO_GET = ("download UCF-101 from https://www.crcv.ucf.edu/data/UCF101.php and convert it to "
              "webdataset shards of 16-frame 128x128 clips under this directory")


class UCF101DataModule(L.LightningDataModule):
    name = "ucf101"
    num_classes = 101

    def __init__(self, root: str, frames: int = 16, resolution: int = 128, batch_size: int = 256, num_workers: int = 8):
        super().__init__()
        self.root, self.batch_size, self.num_workers = Path(root), batch_size, num_workers
        self.image_shape = (3, frames, resolution, resolution)

    def setup(self, stage: str | None = None):
        if not self.root.is_dir():
            raise FileNotFoundError(f"UCF-101: data directory not found: {self.root}; {HOW_TO_GET} (set data.root)")
        raise NotImplementedError(f"UCF-101: reading shards from {self.root} is not implemented yet "
                                  "(the real-data pipeline is a later issue); data=ucf101 fixes model shapes only")
