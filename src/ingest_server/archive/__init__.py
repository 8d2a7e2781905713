"""The MCAP archive: segment writer (foxglove-sdk), reader and slicer (mcap), crash recovery."""
