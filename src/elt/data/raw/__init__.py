"""Readers for the raw layouts researchers download, which ``prepare.py`` encodes once into shards;
nothing trains on them directly. ``base``: what every reader shares (items, flips, unreadable files,
image decoding and the ADM crop); ``images``: ILSVRC-2012 and any class-folder directory;
``ucf101``: UCF-101's videos.
"""
