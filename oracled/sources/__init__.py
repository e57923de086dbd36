"""Collectors: one small module per venue or feed, on the shared base in `_base.py`."""
