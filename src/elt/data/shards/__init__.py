"""Encoded datasets as webdataset shards: written once by ``prepare.py`` (``writer``), streamed by
``train.py`` (``reader``, ``datamodule``); ``format`` holds the layout and the index both agree on."""
