"""Labelled images as a Task: the readers of folders, Parquet, CSV, arrays and datasets, and the named samples."""
